-- Daily aggregates of interactions, kept when retention deletes the raw rows they summarise.
CREATE TABLE interaction_daily_metrics (
    day DATE NOT NULL,
    cycle INTEGER,
    variant VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    topic VARCHAR,
    difficulty VARCHAR,
    interactions BIGINT NOT NULL,
    thumbs_up BIGINT NOT NULL,
    thumbs_down BIGINT NOT NULL,
    accepted BIGINT NOT NULL,
    latency_ms_sum DOUBLE NOT NULL,
    latency_n BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cost_usd DOUBLE NOT NULL
);
