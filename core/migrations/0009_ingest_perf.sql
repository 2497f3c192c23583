-- The fast JSONL path of the ingest numbers only the lines it rejects (the quarantine keeps
-- those); an accepted interaction's source line is NULL there, and kept by the other readers.
ALTER TABLE interactions ALTER COLUMN line DROP NOT NULL;
