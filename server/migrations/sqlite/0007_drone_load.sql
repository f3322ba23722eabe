-- Live backends per drone (docs/design/backends-and-leases.md#scheduling), kept by triggers on
-- `backends` in the transaction that changes them, so that a placement reads one small row per
-- candidate drone instead of counting each candidate's live backends: with a hundred candidates
-- that was a hundred counts per batch of Connects, each walking thousands of index entries.
-- Only TERMINATED is not live (`BackendState::is_live`).
CREATE TABLE drone_load (
    drone_id TEXT PRIMARY KEY,
    live     INTEGER NOT NULL
);
INSERT INTO drone_load (drone_id, live)
    SELECT drone_id, COUNT(*) FROM backends WHERE state <> 'TERMINATED' GROUP BY drone_id;

CREATE TRIGGER backends_live_added AFTER INSERT ON backends WHEN NEW.state <> 'TERMINATED'
BEGIN
    INSERT INTO drone_load (drone_id, live) VALUES (NEW.drone_id, 1)
        ON CONFLICT (drone_id) DO UPDATE SET live = live + 1;
END;

CREATE TRIGGER backends_live_changed AFTER UPDATE OF state ON backends
    WHEN (OLD.state = 'TERMINATED') <> (NEW.state = 'TERMINATED')
BEGIN
    INSERT INTO drone_load (drone_id, live)
        VALUES (NEW.drone_id, CASE WHEN NEW.state = 'TERMINATED' THEN -1 ELSE 1 END)
        ON CONFLICT (drone_id) DO UPDATE SET live = live + excluded.live;
END;

CREATE TRIGGER backends_live_removed AFTER DELETE ON backends WHEN OLD.state <> 'TERMINATED'
BEGIN
    UPDATE drone_load SET live = live - 1 WHERE drone_id = OLD.drone_id;
END;
