-- A key's row found by its holder: a backend's end frees its key, and the sweep checks an expired
-- holder's lease, both by `backend_id`. Without this each was a scan of every key ever used,
-- under the store's write lock (a table that grows with every fresh key until retention). Only
-- held keys are indexed: free rows all carry '' and are never looked up by holder, so the
-- queries name `backend_id <> ''` to use it.
CREATE INDEX backend_keys_by_holder ON backend_keys (backend_id) WHERE backend_id <> '';
