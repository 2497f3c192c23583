-- The fingerprint of the PII detectors that redacted a batch: a cycle re-checks only the rows
-- of batches redacted by other detectors than today's (NULL: a batch from before this column).
ALTER TABLE ingest_batches ADD COLUMN pii_detectors VARCHAR;
