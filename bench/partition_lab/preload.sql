-- 1M rows, 20 tenants, spread uniformly over 2026-01-01 .. 2026-12-01
CREATE TEMP TABLE src AS
SELECT gen_random_uuid() AS request_id, ('00000000-0000-4000-8000-0000000000'||lpad((g%20)::text,2,'0'))::uuid AS tenant_id,
  (g%50)+1 AS api_key_id, 'alias-'||(g%5) AS alias, 'openai' AS provider, 'gpt-x' AS upstream_model, 'h100' AS accelerator,
  'chat.completions' AS endpoint, true AS stream, 'completed' AS status, 200::int2 AS upstream_status, 'chatcmpl-'||g AS upstream_response_id,
  (random()*2000)::int8 AS input_tokens, 0::int8 AS cached_input_tokens, 0::int8 AS cache_write_tokens, (random()*500)::int8 AS output_tokens, 0::int8 AS reasoning_tokens,
  'none' AS reasoning_source, '[]'::jsonb AS flags, NULL::jsonb AS raw_usage, false AS client_disconnected, 1000::int8 AS ttft_us, 20000::int8 AS latency_us,
  timestamptz '2026-01-01' + (g::float8/1000000) * interval '334 days' AS started_at,
  0.001::numeric AS serving_cost_usd, 0::numeric AS reasoning_cost_usd, 0.002::numeric AS spend_usd
FROM generate_series(1,1000000) g;
INSERT INTO metering_usagerecord (request_id,tenant_id,api_key_id,alias,provider,upstream_model,accelerator,endpoint,stream,status,upstream_status,upstream_response_id,input_tokens,cached_input_tokens,cache_write_tokens,output_tokens,reasoning_tokens,reasoning_source,flags,raw_usage,client_disconnected,ttft_us,latency_us,started_at,finished_at,recorded_at,serving_cost_usd,reasoning_cost_usd,spend_usd)
SELECT request_id,tenant_id,api_key_id,alias,provider,upstream_model,accelerator,endpoint,stream,status,upstream_status,upstream_response_id,input_tokens,cached_input_tokens,cache_write_tokens,output_tokens,reasoning_tokens,reasoning_source,flags,raw_usage,client_disconnected,ttft_us,latency_us,started_at,started_at,started_at,serving_cost_usd,reasoning_cost_usd,spend_usd FROM src;
INSERT INTO u_part (request_id,tenant_id,api_key_id,alias,provider,upstream_model,accelerator,endpoint,stream,status,upstream_status,upstream_response_id,input_tokens,cached_input_tokens,cache_write_tokens,output_tokens,reasoning_tokens,reasoning_source,flags,raw_usage,client_disconnected,ttft_us,latency_us,started_at,finished_at,recorded_at,serving_cost_usd,reasoning_cost_usd,spend_usd)
SELECT request_id,tenant_id,api_key_id,alias,provider,upstream_model,accelerator,endpoint,stream,status,upstream_status,upstream_response_id,input_tokens,cached_input_tokens,cache_write_tokens,output_tokens,reasoning_tokens,reasoning_source,flags,raw_usage,client_disconnected,ttft_us,latency_us,started_at,started_at,started_at,serving_cost_usd,reasoning_cost_usd,spend_usd FROM src;
INSERT INTO u_partb SELECT * FROM u_part;
INSERT INTO usage_request_ids SELECT request_id, started_at FROM src;
VACUUM ANALYZE;
