-- Key leases across store outages (docs/design/backends-and-leases.md#store-outages). Every
-- controller records here, once a second, that it reached the store (`seen_at`, its clock, in
-- milliseconds) and the last time it told a drone that a key renewal was deferred because it could
-- not reach the store (`last_deferral_at`, 0: never), with the grace it promised such drones
-- (`outage_grace_ms`). The sweep frees an expired key at once only when every controller has
-- reported past the key's expiry and none deferred since the key's last renewal; otherwise it waits
-- the grace. A row stays until no key it could speak for is left (`seen_at` older than twice
-- the grace and a lease). `stopped_at`: when the controller shut down, deferring nothing more
-- (0: running).
CREATE TABLE controller_ticks (
    controller_id    TEXT PRIMARY KEY,
    seen_at          BIGINT NOT NULL,
    last_deferral_at BIGINT NOT NULL,
    outage_grace_ms  BIGINT NOT NULL,
    stopped_at       BIGINT NOT NULL
);
