-- Retention of terminated backends (docs/design/storage-and-revisions.md#retention): a backend
-- TERMINATED for longer than --backend-retention is removed (one REMOVED row in backend_history),
-- and with it its tokens and, when it was the key's last holder and the key is free, its key row.

-- The highest fencing token of any key row removed so far. A key without a row starts above it,
-- so a key used again after its row was removed still gets a higher token than any holder before.
CREATE TABLE fencing_floor (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    token BIGINT NOT NULL
);
INSERT INTO fencing_floor (id, token) VALUES (1, 0);

-- The retention pass walks terminated backends oldest first.
CREATE INDEX backends_terminated_by_time ON backends (updated_at) WHERE state = 'TERMINATED';
-- Compaction's age bound reads the backend history by time too.
CREATE INDEX backend_history_by_time ON backend_history (recorded_at);
