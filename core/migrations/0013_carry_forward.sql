-- Carry-forward: a cycle's dataset starts from its parent version, so each dataset row keeps
-- where it first came from, and each row is sketched once (when the version that first holds
-- it is written) for later cycles to deduplicate their new rows against without recomputing.
ALTER TABLE dataset_rows ADD COLUMN origin_cycle INTEGER;   -- the cycle whose run added the row
ALTER TABLE dataset_rows ADD COLUMN origin_version VARCHAR; -- the version that first held it
ALTER TABLE dataset_rows ADD COLUMN text_md5 VARCHAR;       -- md5 of prompt || response

UPDATE dataset_rows SET origin_cycle = v.cycle, origin_version = v.version_id,
    text_md5 = md5(dataset_rows.prompt || chr(31) || dataset_rows.response)
FROM dataset_versions v WHERE v.version_id = dataset_rows.version_id;

-- One sketch per row text: the exact-duplicate key and the word 3-gram hashes that the
-- near-duplicate stage compares. interaction_id and user_id let erasure reach it.
CREATE TABLE dataset_row_sketches (
    row_key VARCHAR NOT NULL,
    text_md5 VARCHAR NOT NULL,
    interaction_id VARCHAR,
    user_id VARCHAR,
    exact_key VARCHAR NOT NULL,            -- md5 of the normalised prompt and response
    shingles UINTEGER[] NOT NULL,          -- word 3-gram hashes, sorted and distinct
    engine VARCHAR NOT NULL,               -- what hashed them (a sketch counts only there)
    band_params VARCHAR,                   -- the MinHash/LSH banding the signatures are for
    signatures UBIGINT[]                   -- one LSH band signature per band (NULL: no shingle)
);
