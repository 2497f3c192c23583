-- Synthetic generation: runs, the generated examples keyed by (spec hash, cell, index) with
-- their provenance, and OpenAI batch jobs with the mapping of their requests back to items.
CREATE TABLE generation_runs (
    run_id VARCHAR PRIMARY KEY,
    plan_id VARCHAR NOT NULL,
    plan_version INTEGER NOT NULL,
    spec_hash VARCHAR NOT NULL,
    mode VARCHAR NOT NULL,                 -- online | batch
    status VARCHAR NOT NULL,               -- running | done | budget_stop | interrupted | aborted | submitted
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    requested INTEGER NOT NULL DEFAULT 0,
    generated INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    api_calls INTEGER NOT NULL DEFAULT 0,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd DOUBLE NOT NULL DEFAULT 0,
    estimated_cost_usd DOUBLE NOT NULL DEFAULT 0,
    budget_usd DOUBLE NOT NULL DEFAULT 0,
    message VARCHAR NOT NULL DEFAULT ''
);

CREATE TABLE generated_examples (
    spec_hash VARCHAR NOT NULL,
    cell_key VARCHAR NOT NULL,             -- canonical JSON of the cell's axis values
    item_index INTEGER NOT NULL,
    plan_id VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    cell JSON NOT NULL,
    status VARCHAR NOT NULL,               -- valid | failed
    question VARCHAR,
    answer VARCHAR,
    payload JSON,
    failure_reason VARCHAR,
    attempts INTEGER NOT NULL DEFAULT 0,
    teacher_model VARCHAR NOT NULL,
    endpoint VARCHAR NOT NULL,             -- base URL only; never a key
    template_hash VARCHAR NOT NULL,
    temperature DOUBLE NOT NULL,
    generated_at TIMESTAMPTZ NOT NULL,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd DOUBLE NOT NULL DEFAULT 0,
    PRIMARY KEY (spec_hash, cell_key, item_index)
);

CREATE TABLE generation_batches (
    batch_id VARCHAR PRIMARY KEY,
    run_id VARCHAR NOT NULL,
    plan_id VARCHAR NOT NULL,
    spec_hash VARCHAR NOT NULL,
    input_file_id VARCHAR NOT NULL,
    endpoint VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    ingested_at TIMESTAMPTZ
);

CREATE TABLE generation_batch_items (
    batch_id VARCHAR NOT NULL,
    custom_id VARCHAR NOT NULL,
    cell_key VARCHAR NOT NULL,
    item_index INTEGER NOT NULL,
    PRIMARY KEY (batch_id, custom_id)
);
