-- A version's rows are members that point at stored texts: a row carried from version to
-- version is one more small member row, its prompt and response are stored once (per row
-- key and text). dataset_rows stays as the view every reader knows.
CREATE TABLE dataset_texts (
    row_key VARCHAR NOT NULL,
    text_md5 VARCHAR NOT NULL,             -- md5 of prompt || chr(31) || response
    interaction_id VARCHAR,                -- production rows: erasure reaches the text by these
    user_id VARCHAR,
    prompt VARCHAR NOT NULL,
    response VARCHAR NOT NULL
);

CREATE TABLE dataset_members (
    version_id VARCHAR NOT NULL,
    row_key VARCHAR NOT NULL,              -- interaction id, or syn:<spec>:<cell hash>:<index>
    source VARCHAR NOT NULL,               -- production | synthetic
    interaction_id VARCHAR,                -- production rows only
    user_id VARCHAR,
    cell_key VARCHAR NOT NULL,             -- canonical JSON of the row's axis values
    split VARCHAR NOT NULL,                -- train | validation
    system VARCHAR,
    sort_key VARCHAR NOT NULL,             -- md5 of row_key: the canonical (shuffled) order
    origin_cycle INTEGER,                  -- the cycle whose run added the row
    origin_version VARCHAR,                -- the version that first held it
    text_md5 VARCHAR NOT NULL              -- with row_key, its text in dataset_texts
);

INSERT INTO dataset_texts
SELECT row_key, md5(prompt || chr(31) || response) AS h, any_value(interaction_id),
    any_value(user_id), any_value(prompt), any_value(response)
FROM dataset_rows GROUP BY row_key, h;

INSERT INTO dataset_members
SELECT version_id, row_key, source, interaction_id, user_id, cell_key, split, system, sort_key,
    origin_cycle, origin_version, md5(prompt || chr(31) || response)
FROM dataset_rows;

DROP TABLE dataset_rows;

CREATE VIEW dataset_rows AS
SELECT m.version_id, m.row_key, m.source, m.interaction_id, m.user_id, m.cell_key, m.split,
    m.system, t.prompt, t.response, m.sort_key, m.origin_cycle, m.origin_version, m.text_md5
FROM dataset_members m JOIN dataset_texts t ON t.row_key = m.row_key AND t.text_md5 = m.text_md5;
