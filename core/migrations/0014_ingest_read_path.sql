-- How each load read its file: 'parallel' (JSONL read in parallel, rejects numbered
-- afterwards), 'exact' (JSONL read line by line), 'csv' or 'parquet'. NULL: a batch stored
-- before this column.
ALTER TABLE ingest_batches ADD COLUMN read_path VARCHAR;
