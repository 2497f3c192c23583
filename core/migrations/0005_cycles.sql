-- Cycles: each run with its funnel, every row a stage removed (with the stage and rule), and
-- the immutable dataset versions it built. Tables holding interaction rows carry
-- interaction_id and user_id, so that erasure (forget) reaches them.
CREATE TABLE cycle_runs (
    run_id VARCHAR PRIMARY KEY,
    plan_id VARCHAR NOT NULL,
    plan_version INTEGER NOT NULL,
    cycle INTEGER NOT NULL,
    window_start TIMESTAMPTZ,              -- NULL when the cycle trains on synthetic data only
    window_end TIMESTAMPTZ,
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ NOT NULL,
    actor VARCHAR NOT NULL,
    dataset_version VARCHAR NOT NULL,
    warnings JSON NOT NULL
);

CREATE TABLE cycle_stages (
    run_id VARCHAR NOT NULL,
    position INTEGER NOT NULL,
    name VARCHAR NOT NULL,                 -- window, consent, pii_redacted, a filter rule, mix, split
    rule VARCHAR NOT NULL,                 -- the rule with its parameters, as people read it
    params JSON NOT NULL,
    origin VARCHAR NOT NULL,               -- plan | pipeline | default (added: the plan lacks it)
    rows_in BIGINT NOT NULL,
    rows_out BIGINT NOT NULL,
    removed BIGINT NOT NULL,
    added BIGINT NOT NULL,
    seconds DOUBLE NOT NULL,
    PRIMARY KEY (run_id, position)
);

CREATE TABLE cycle_removed_rows (
    run_id VARCHAR NOT NULL,
    interaction_id VARCHAR NOT NULL,
    user_id VARCHAR NOT NULL,
    position INTEGER NOT NULL,
    stage VARCHAR NOT NULL,
    rule VARCHAR NOT NULL,
    detail VARCHAR NOT NULL
);

CREATE TABLE dataset_versions (
    version_id VARCHAR PRIMARY KEY,        -- ds-<plan>-c<cycle>-v<n>
    plan_id VARCHAR NOT NULL,
    plan_version INTEGER NOT NULL,
    cycle INTEGER NOT NULL,
    number INTEGER NOT NULL,
    parent_version VARCHAR,
    run_id VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL,               -- of the canonical export (openai-jsonl, all splits)
    rows BIGINT NOT NULL,
    train_rows BIGINT NOT NULL,
    validation_rows BIGINT NOT NULL,
    production_rows BIGINT NOT NULL,
    synthetic_rows BIGINT NOT NULL,
    lineage JSON NOT NULL,
    composition JSON NOT NULL,
    created_by VARCHAR NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE dataset_rows (
    version_id VARCHAR NOT NULL,
    row_key VARCHAR NOT NULL,              -- interaction id, or syn:<spec>:<cell hash>:<index>
    source VARCHAR NOT NULL,               -- production | synthetic
    interaction_id VARCHAR,                -- production rows only
    user_id VARCHAR,
    cell_key VARCHAR NOT NULL,             -- canonical JSON of the row's axis values
    split VARCHAR NOT NULL,                -- train | validation
    system VARCHAR,
    prompt VARCHAR NOT NULL,
    response VARCHAR NOT NULL,
    sort_key VARCHAR NOT NULL              -- md5 of row_key: the canonical (shuffled) order
);
