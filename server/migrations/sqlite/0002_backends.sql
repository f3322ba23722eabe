-- Backends, their status history, key leases, pending drone actions and connection tokens.
-- Every change to a backend takes the revision counter's row lock (see 0001), which serializes
-- the get-or-create of Connect across controllers.

-- The current version of each backend: `data` is the whole domain object (JSON); the columns
-- are copies of what listings, the scheduler and the sweeps select on. Absent keys are ''.
CREATE TABLE backends (
    id               TEXT PRIMARY KEY,
    key_namespace    TEXT NOT NULL,
    key_name         TEXT NOT NULL,
    key_tag          TEXT NOT NULL,
    drone_id         TEXT NOT NULL,
    cluster          TEXT NOT NULL,
    pool             TEXT NOT NULL,
    state            TEXT NOT NULL,
    fencing_token    INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    -- Kept apart from `data`: proxies report traffic often and nobody watches it.
    last_activity_at INTEGER NOT NULL,
    revision         INTEGER NOT NULL,
    data             TEXT NOT NULL
);
-- Not unique: `backend_keys` names the one holder of a key. After a lease expires on a drone
-- that is still attached, the old backend stays non-TERMINATED here until its drone reports the
-- end (it stopped serving at 3/4 of the lease), while a new holder may already exist.
CREATE INDEX backends_by_key ON backends (key_namespace, key_name);
CREATE INDEX backends_by_drone ON backends (drone_id, state);
CREATE INDEX backends_by_state ON backends (state);

-- Every status a backend went through, for WatchBackend, under the global revision.
CREATE TABLE backend_history (
    revision    INTEGER PRIMARY KEY,
    backend_id  TEXT NOT NULL,
    status      TEXT NOT NULL,
    recorded_at INTEGER NOT NULL
);
CREATE INDEX backend_history_by_backend ON backend_history (backend_id, revision);

-- One row per key ever used. `backend_id` is the live holder ('' when free); the fencing token
-- only grows, so a later holder always has a higher one.
CREATE TABLE backend_keys (
    namespace        TEXT NOT NULL,
    name             TEXT NOT NULL,
    tag              TEXT NOT NULL,
    backend_id       TEXT NOT NULL,
    fencing_token    INTEGER NOT NULL,
    lease_expires_at INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE INDEX backend_keys_by_expiry ON backend_keys (lease_expires_at) WHERE backend_id <> '';

-- Actions for drones, kept until the drone acknowledges them; `seq` orders them oldest first.
CREATE TABLE drone_actions (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    drone_id   TEXT NOT NULL,
    backend_id TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX drone_actions_by_drone ON drone_actions (drone_id, seq);

-- Connection tokens, by SHA-256 (hex) only. Static tokens have expires_at = 0.
CREATE TABLE connection_tokens (
    token_hash TEXT PRIMARY KEY,
    backend_id TEXT NOT NULL,
    user_name  TEXT NOT NULL,
    auth       TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX connection_tokens_by_backend ON connection_tokens (backend_id);
