-- The backend history becomes the backend half of the watch log (WatchBackends; see
-- docs/design/storage-and-revisions.md#backends): each row carries the whole backend after the
-- change, whether it was the backend's first row, and the state before it, so a watcher can tell
-- a backend entering or leaving its filter without keeping state per backend.
-- Rows written before this migration have '' in all three; readers fall back to the backend's
-- current row with the row's status.
ALTER TABLE backend_history ADD COLUMN change TEXT NOT NULL DEFAULT '';
ALTER TABLE backend_history ADD COLUMN previous_state TEXT NOT NULL DEFAULT '';
ALTER TABLE backend_history ADD COLUMN data TEXT NOT NULL DEFAULT '';
