-- Evals and release gates: eval set versions (frozen once results pin them), eval runs with
-- their outputs and scores, fine-tuning jobs and their events, each cycle's candidate, and the
-- gate decisions (approved or overridden, with the reason).
CREATE TABLE eval_set_versions (
    eval_set VARCHAR NOT NULL,
    version INTEGER NOT NULL,
    content_hash VARCHAR NOT NULL,         -- sha256 of the items' canonical JSON
    items INTEGER NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    created_by VARCHAR NOT NULL,
    source VARCHAR NOT NULL,               -- file name or batch id it came from
    frozen_at TIMESTAMPTZ,                 -- once set, the version's items never change
    frozen_by VARCHAR,
    frozen_reason VARCHAR,
    PRIMARY KEY (eval_set, version)
);

CREATE TABLE eval_set_items (
    eval_set VARCHAR NOT NULL,
    version INTEGER NOT NULL,
    item_id VARCHAR NOT NULL,
    prompt VARCHAR NOT NULL,
    reference VARCHAR,
    topic VARCHAR,
    difficulty VARCHAR,
    labels JSON,                           -- other slice labels and grader inputs (tests, regex, schema)
    PRIMARY KEY (eval_set, version, item_id)
);

CREATE TABLE eval_runs (
    run_id VARCHAR PRIMARY KEY,
    run_key VARCHAR,                       -- what a run asks for; a rerun with the same key resumes
    plan_id VARCHAR,
    cycle INTEGER,
    role VARCHAR NOT NULL,                 -- candidate | production | teacher | other
    model VARCHAR NOT NULL,
    endpoint VARCHAR NOT NULL DEFAULT '',  -- base URL only; never a key
    eval_set VARCHAR NOT NULL,
    set_version INTEGER NOT NULL,
    source VARCHAR NOT NULL,               -- run | import | demo
    samples INTEGER NOT NULL DEFAULT 1,
    temperature DOUBLE,
    status VARCHAR NOT NULL,               -- running | done | interrupted | aborted
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    api_calls INTEGER NOT NULL DEFAULT 0,
    actor VARCHAR NOT NULL DEFAULT '',
    message VARCHAR NOT NULL DEFAULT ''
);

CREATE TABLE eval_outputs (
    run_id VARCHAR NOT NULL,
    item_id VARCHAR NOT NULL,
    sample INTEGER NOT NULL,
    output VARCHAR,
    error VARCHAR,                         -- the request failed: no output, no scores
    latency_ms DOUBLE,
    input_tokens INTEGER,
    output_tokens INTEGER,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, item_id, sample)
);

CREATE TABLE eval_scores (
    run_id VARCHAR NOT NULL,
    item_id VARCHAR NOT NULL,
    sample INTEGER NOT NULL,
    grader VARCHAR NOT NULL,
    score DOUBLE,                          -- 0..1; NULL when the grader errored
    error VARCHAR,
    detail VARCHAR,
    graded_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, item_id, sample, grader)
);

CREATE TABLE training_jobs (
    job_id VARCHAR PRIMARY KEY,
    plan_id VARCHAR NOT NULL,
    cycle INTEGER NOT NULL,
    dataset_version VARCHAR NOT NULL,
    export_path VARCHAR NOT NULL,
    export_sha256 VARCHAR NOT NULL,
    export_rows INTEGER NOT NULL,
    training_file_id VARCHAR NOT NULL,
    base_model VARCHAR NOT NULL,
    hyperparameters JSON NOT NULL,
    endpoint VARCHAR NOT NULL,             -- base URL only; never a key
    status VARCHAR NOT NULL,
    fine_tuned_model VARCHAR,
    trained_tokens BIGINT,
    cost_usd DOUBLE,
    error VARCHAR,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    actor VARCHAR NOT NULL
);

CREATE TABLE training_events (
    job_id VARCHAR NOT NULL,
    event_id VARCHAR NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    level VARCHAR NOT NULL,
    message VARCHAR NOT NULL,
    PRIMARY KEY (job_id, event_id)
);

CREATE TABLE cycle_candidates (
    plan_id VARCHAR NOT NULL,
    cycle INTEGER NOT NULL,
    model VARCHAR NOT NULL,
    endpoint VARCHAR NOT NULL DEFAULT '',  -- base URL only; never a key
    source VARCHAR NOT NULL,               -- fine_tune | registered
    job_id VARCHAR,
    dataset_version VARCHAR,
    registered_at TIMESTAMPTZ NOT NULL,
    registered_by VARCHAR NOT NULL,
    PRIMARY KEY (plan_id, cycle)
);

CREATE TABLE gate_decisions (
    decision_id VARCHAR PRIMARY KEY,
    plan_id VARCHAR NOT NULL,
    plan_version INTEGER NOT NULL,
    cycle INTEGER NOT NULL,
    candidate_model VARCHAR NOT NULL,
    verdict VARCHAR NOT NULL,              -- what the gates said: pass | fail | insufficient_data
    decision VARCHAR NOT NULL,             -- approved | overridden | rejected
    reason VARCHAR NOT NULL,
    actor VARCHAR NOT NULL,
    report JSON NOT NULL,
    decided_at TIMESTAMPTZ NOT NULL
);
