-- Node state as an MVCC history: one row per change under a global, gapless revision.

-- The single row whose update opens every write: it hands out revisions in commit order.
CREATE TABLE revision_counter (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    current   BIGINT NOT NULL,
    compacted BIGINT NOT NULL
);
INSERT INTO revision_counter (id, current, compacted) VALUES (1, 0, 0);

-- One row per node ever known and not yet compacted away; `removed` is the revision of its removal
-- (0 while it exists), so snapshots before the removal still find it.
CREATE TABLE nodes (
    -- Byte order, as in Rust and SQLite: page cursors compare ids, whatever the database locale.
    id       TEXT COLLATE "C" PRIMARY KEY,
    kind     TEXT NOT NULL,
    cluster  TEXT NOT NULL,
    name     TEXT NOT NULL,
    revision BIGINT NOT NULL,
    removed  BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX nodes_identity ON nodes (kind, cluster, name) WHERE removed = 0;

CREATE TABLE node_history (
    revision    BIGINT PRIMARY KEY,
    node_id     TEXT COLLATE "C" NOT NULL,
    change      TEXT NOT NULL CHECK (change IN ('ADDED', 'MODIFIED', 'REMOVED')),
    kind        TEXT NOT NULL,
    state       TEXT NOT NULL,
    cluster     TEXT NOT NULL,
    pool        TEXT NOT NULL,
    data        TEXT NOT NULL,
    recorded_at BIGINT NOT NULL
);
-- A snapshot read finds each node's newest version at or below a revision with one probe here.
CREATE INDEX node_history_by_node ON node_history (node_id, revision);
CREATE INDEX node_history_by_time ON node_history (recorded_at);

CREATE TABLE shared_secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
