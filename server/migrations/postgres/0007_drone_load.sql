-- Live backends per drone (docs/design/backends-and-leases.md#scheduling), kept by a trigger on
-- `backends` in the transaction that changes them, so that a placement reads one small row per
-- candidate drone instead of counting each candidate's live backends: with a hundred candidates
-- that was a hundred counts per batch of Connects, each walking thousands of index entries.
-- Only TERMINATED is not live (`BackendState::is_live`). Every write that changes a backend's
-- state holds the revision counter's row lock first, so these rows are updated by one
-- transaction at a time.
CREATE TABLE drone_load (
    drone_id TEXT COLLATE "C" PRIMARY KEY,
    live     BIGINT NOT NULL
);
INSERT INTO drone_load (drone_id, live)
    SELECT drone_id, COUNT(*) FROM backends WHERE state <> 'TERMINATED' GROUP BY drone_id;

CREATE FUNCTION backends_count_live() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    delta BIGINT := 0;
    drone TEXT;
BEGIN
    IF TG_OP <> 'DELETE' THEN
        drone := NEW.drone_id;
        IF NEW.state <> 'TERMINATED' THEN
            delta := delta + 1;
        END IF;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        drone := OLD.drone_id;
        IF OLD.state <> 'TERMINATED' THEN
            delta := delta - 1;
        END IF;
    END IF;
    IF delta <> 0 THEN
        INSERT INTO drone_load (drone_id, live) VALUES (drone, delta)
            ON CONFLICT (drone_id) DO UPDATE SET live = drone_load.live + EXCLUDED.live;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER backends_count_live AFTER INSERT OR UPDATE OF state OR DELETE ON backends
    FOR EACH ROW EXECUTE FUNCTION backends_count_live();
