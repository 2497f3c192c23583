-- Data in: ingest batches, interactions, the quarantine, PII findings, consent, eval items.
CREATE TABLE ingest_batches (
    batch_id VARCHAR PRIMARY KEY,
    kind VARCHAR NOT NULL,            -- interactions | consent | eval-items
    file_name VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL,
    cycle INTEGER,
    rows_read BIGINT NOT NULL,
    accepted BIGINT NOT NULL,
    rejected BIGINT NOT NULL,
    duplicates BIGINT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ NOT NULL,
    actor VARCHAR NOT NULL
);

-- Prompt, response and system hold redacted text; `pii` lists the types found in them and
-- raw_* keep the original text of those rows only, shown behind an audited toggle and erased
-- with the user. Ids are unique by the ingest's duplicate rule (no index: it would slow loads).
CREATE TABLE interactions (
    interaction_id VARCHAR NOT NULL,
    batch_id VARCHAR NOT NULL,
    cycle INTEGER,
    line BIGINT NOT NULL,
    ts TIMESTAMPTZ NOT NULL,
    user_id VARCHAR NOT NULL,
    variant VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    prompt VARCHAR NOT NULL,
    response VARCHAR NOT NULL,
    system VARCHAR,
    feedback VARCHAR,
    accepted BOOLEAN,
    latency_ms BIGINT,
    input_tokens BIGINT,
    output_tokens BIGINT,
    cost_usd DOUBLE,
    topic VARCHAR,
    difficulty VARCHAR,
    metadata JSON,
    pii VARCHAR[] NOT NULL,
    raw_prompt VARCHAR,
    raw_response VARCHAR,
    raw_system VARCHAR
);

CREATE TABLE pii_counts (
    batch_id VARCHAR NOT NULL,
    pii_type VARCHAR NOT NULL,
    found BIGINT NOT NULL,
    PRIMARY KEY (batch_id, pii_type)
);

-- Rejected rows with their line number (record number for CSV, row for Parquet) and reason.
CREATE TABLE quarantine (
    batch_id VARCHAR NOT NULL,
    line BIGINT NOT NULL,
    reason VARCHAR NOT NULL,
    raw VARCHAR,
    user_id VARCHAR,
    PRIMARY KEY (batch_id, line)
);

CREATE TABLE consent_events (
    batch_id VARCHAR NOT NULL,
    line BIGINT NOT NULL,
    user_id VARCHAR NOT NULL,
    ts TIMESTAMPTZ NOT NULL,
    scope VARCHAR NOT NULL,
    action VARCHAR NOT NULL,
    policy_version VARCHAR NOT NULL,
    source VARCHAR NOT NULL
);

CREATE TABLE eval_items (
    item_id VARCHAR NOT NULL,
    batch_id VARCHAR NOT NULL,
    line BIGINT NOT NULL,
    eval_set VARCHAR NOT NULL,
    prompt VARCHAR NOT NULL,
    reference VARCHAR,
    topic VARCHAR,
    difficulty VARCHAR,
    labels JSON
);
