-- The sweep's limit checks (docs/design/backends-and-leases.md#limits). `limit_at` is a lower
-- bound of when a running backend reaches its lifetime or idle limit, in milliseconds (NULL: it
-- has no limit or is no longer running), so a pass reads only the backends whose time may have
-- come instead of every live one. Traffic reports do not touch it: they only move the idle
-- deadline later, and a pass that finds a backend not due yet stores its real time.
ALTER TABLE backends ADD COLUMN limit_at BIGINT;
-- Backends from before this column are checked once by the next pass, which sets their time.
UPDATE backends SET limit_at = 0 WHERE state <> 'TERMINATED';
CREATE INDEX backends_by_limit ON backends (limit_at) WHERE limit_at IS NOT NULL;
