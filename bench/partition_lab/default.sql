\set VERBOSITY terse
\timing on
\echo -- lock modes: DETACH (plain) and DROP of a partition, seen from the same tx
BEGIN; ALTER TABLE p24 DETACH PARTITION p24_0;
SELECT relation::regclass, mode FROM pg_locks WHERE pid = pg_backend_pid() AND relation::regclass::text IN ('p24','p24_0') ORDER BY 1,2; ROLLBACK;
BEGIN; DROP TABLE p24_1;
SELECT relation::regclass, mode FROM pg_locks WHERE pid = pg_backend_pid() AND relation = 'p24'::regclass; ROLLBACK;
BEGIN; CREATE TABLE p24_new PARTITION OF p24 FOR VALUES FROM ('2027-01-01') TO ('2027-02-01');
SELECT relation::regclass, mode FROM pg_locks WHERE pid = pg_backend_pid() AND relation = 'p24'::regclass; ROLLBACK;
\echo -- insert with no partition for the row
INSERT INTO p24 SELECT * FROM p24 WHERE started_at >= '2026-12-01' LIMIT 1;  -- fine
INSERT INTO p24 (id, request_id, alias, provider, upstream_model, accelerator, endpoint, stream, status, upstream_status, upstream_response_id, input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens, reasoning_source, flags, client_disconnected, latency_us, started_at, finished_at, recorded_at, api_key_id, tenant_id)
 SELECT id+10000000, gen_random_uuid(), alias, provider, upstream_model, accelerator, endpoint, stream, status, upstream_status, upstream_response_id, 0,0,0,0,0, reasoning_source, flags, false, 0, '2027-03-05', '2027-03-05', now(), api_key_id, tenant_id FROM p24 LIMIT 1;
\echo -- with a DEFAULT partition: the row lands there; then creating its month fails
CREATE TABLE p24_default PARTITION OF p24 DEFAULT;
INSERT INTO p24 (id, request_id, alias, provider, upstream_model, accelerator, endpoint, stream, status, upstream_status, upstream_response_id, input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens, reasoning_source, flags, client_disconnected, latency_us, started_at, finished_at, recorded_at, api_key_id, tenant_id)
 SELECT id+10000000, gen_random_uuid(), alias, provider, upstream_model, accelerator, endpoint, stream, status, upstream_status, upstream_response_id, 0,0,0,0,0, reasoning_source, flags, false, 0, '2027-03-05', '2027-03-05', now(), api_key_id, tenant_id FROM p24 LIMIT 1;
CREATE TABLE p24_202703 PARTITION OF p24 FOR VALUES FROM ('2027-03-01') TO ('2027-04-01');
\echo -- moving it out without UPDATE/DELETE: detach default, create month, re-insert, drop old default
BEGIN;
ALTER TABLE p24 DETACH PARTITION p24_default;
CREATE TABLE p24_202703 PARTITION OF p24 FOR VALUES FROM ('2027-03-01') TO ('2027-04-01');
INSERT INTO p24 SELECT * FROM p24_default;
DROP TABLE p24_default;
CREATE TABLE p24_default PARTITION OF p24 DEFAULT;
COMMIT;
SELECT count(*) AS rows_in_202703 FROM p24_202703;
\echo -- cost of creating a partition next to a default holding N rows (scan to validate)
INSERT INTO p24 SELECT id+20000000, gen_random_uuid(), alias, provider, upstream_model, accelerator, endpoint, stream, status, upstream_status, upstream_response_id, input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens, reasoning_source, flags, raw_usage, client_disconnected, ttft_us, latency_us, started_at + interval '3 years', finished_at, recorded_at, api_key_id, tenant_id, reasoning_cost_usd, serving_cost_usd, cost_rate_id, spend_usd FROM u_part LIMIT 300000;
SELECT count(*) AS default_rows FROM p24_default;
BEGIN; CREATE TABLE p24_203001 PARTITION OF p24 FOR VALUES FROM ('2031-01-01') TO ('2031-02-01'); ROLLBACK;
BEGIN; CREATE TABLE p24_empty_default_case PARTITION OF p24 FOR VALUES FROM ('2032-01-01') TO ('2032-02-01'); ROLLBACK;
