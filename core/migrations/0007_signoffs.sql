-- Sign-offs: each required role's decision on one exact plan version.
CREATE TABLE plan_approvals (
    plan_id VARCHAR NOT NULL,
    version INTEGER NOT NULL,
    role VARCHAR NOT NULL,
    approver VARCHAR NOT NULL,
    decision VARCHAR NOT NULL,
    note VARCHAR NOT NULL,
    decided_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (plan_id, version, role)
);
