-- Training on more than OpenAI: each job names its backend (local LoRA, Together AI, OpenAI),
-- a local job its directory and the weights it wrote (with their sha256), and per-step metrics
-- (loss, learning rate, tokens, eval loss). A candidate keeps the weights it was set with, and
-- every eval run the weights it evaluated, so that gates judge exactly what was evaluated.
ALTER TABLE training_jobs ADD COLUMN backend VARCHAR DEFAULT 'openai';
ALTER TABLE training_jobs ADD COLUMN job_dir VARCHAR;
ALTER TABLE training_jobs ADD COLUMN weights_path VARCHAR;
ALTER TABLE training_jobs ADD COLUMN weights_sha256 VARCHAR;
ALTER TABLE training_jobs ADD COLUMN device VARCHAR;
ALTER TABLE training_jobs ADD COLUMN gpu_hours DOUBLE;
ALTER TABLE training_jobs ADD COLUMN step INTEGER;
ALTER TABLE training_jobs ADD COLUMN total_steps INTEGER;

CREATE TABLE training_metrics (
    job_id VARCHAR NOT NULL,
    step INTEGER NOT NULL,
    epoch DOUBLE,
    loss DOUBLE,
    learning_rate DOUBLE,
    tokens BIGINT,                         -- tokens seen so far (trained tokens at this step)
    eval_loss DOUBLE,
    logged_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (job_id, step)
);

ALTER TABLE cycle_candidates ADD COLUMN base_model VARCHAR;
ALTER TABLE cycle_candidates ADD COLUMN weights_path VARCHAR;
ALTER TABLE cycle_candidates ADD COLUMN weights_sha256 VARCHAR;

ALTER TABLE eval_runs ADD COLUMN weights_sha256 VARCHAR;
