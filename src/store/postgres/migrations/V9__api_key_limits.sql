-- Limits per API key (KeysService): calls per second (a token bucket in
-- the serving replica's memory) and the largest task payload in bytes.
-- NULL: no limit. Fixed when the key is created.
ALTER TABLE api_keys
    ADD COLUMN max_requests_per_second double precision,
    ADD COLUMN max_payload_bytes bigint;
