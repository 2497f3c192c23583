-- The workspace, plans and their immutable versions, and the append-only audit log.
CREATE TABLE workspace (
    key VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);

CREATE TABLE plans (
    plan_id VARCHAR PRIMARY KEY,
    name VARCHAR NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    is_demo BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE plan_versions (
    plan_id VARCHAR NOT NULL,
    version INTEGER NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    author VARCHAR NOT NULL,
    note VARCHAR NOT NULL,
    body JSON NOT NULL,
    sha256 VARCHAR NOT NULL,
    lint_errors INTEGER NOT NULL,
    lint_warnings INTEGER NOT NULL,
    PRIMARY KEY (plan_id, version)
);

CREATE SEQUENCE audit_seq START 1;

CREATE TABLE audit_log (
    audit_id BIGINT PRIMARY KEY DEFAULT nextval('audit_seq'),
    ts TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    actor VARCHAR NOT NULL,
    action VARCHAR NOT NULL,
    target VARCHAR NOT NULL,
    detail JSON NOT NULL
);
