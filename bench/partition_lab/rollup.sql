\timing off
INSERT INTO metering_tenant (id,name,is_active,created_at) VALUES ('00000000-0000-4000-8000-000000000099','big',true,now()),('00000000-0000-4000-8000-000000000098','big2',true,now()) ON CONFLICT DO NOTHING;
CREATE TABLE r_key (LIKE metering_usagerollup INCLUDING DEFAULTS);
ALTER TABLE r_key ADD COLUMN api_key_id int8 NOT NULL DEFAULT 0;
-- 3 tenants x 720 h x 5 aliases x 10 keys x 16 shards
INSERT INTO r_key (id, tenant_id, alias, accelerator, hour, shard, api_key_id, requests, flagged_requests, input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens, serving_cost_usd, reasoning_cost_usd, spend_usd, last_record_id, changed_xid, updated_at)
SELECT row_number() over (), t, 'alias-'||a, 'h100', timestamptz '2026-11-01' + h * interval '1 hour', s, k, 17, 0, 30000, 100, 0, 9000, 500, 0.0123, 0.001, 0.0456, 1, 1, now()
FROM unnest(ARRAY['00000000-0000-4000-8000-000000000099','00000000-0000-4000-8000-000000000098','00000000-0000-4000-8000-000000000001']::uuid[]) t,
     generate_series(0,719) h, generate_series(0,4) a, generate_series(1,10) k, generate_series(0,15) s;
CREATE INDEX ON r_key (tenant_id, hour);
-- the same, shards folded (one row per tenant, alias, key, hour)
CREATE TABLE r_key_folded AS SELECT tenant_id, alias, accelerator, hour, api_key_id, sum(requests) requests, sum(flagged_requests) flagged_requests, sum(input_tokens)::int8 input_tokens, sum(cached_input_tokens)::int8 cached_input_tokens, sum(cache_write_tokens)::int8 cache_write_tokens, sum(output_tokens)::int8 output_tokens, sum(reasoning_tokens)::int8 reasoning_tokens FROM r_key GROUP BY 1,2,3,4,5;
CREATE INDEX ON r_key_folded (tenant_id, hour);
-- today's shape: no api_key, 16 shards
CREATE TABLE r_nokey AS SELECT tenant_id, alias, accelerator, hour, shard, sum(requests) requests, sum(input_tokens)::int8 input_tokens, sum(cached_input_tokens)::int8 cached_input_tokens, sum(cache_write_tokens)::int8 cache_write_tokens, sum(output_tokens)::int8 output_tokens, sum(reasoning_tokens)::int8 reasoning_tokens FROM r_key GROUP BY 1,2,3,4,5;
CREATE INDEX ON r_nokey (tenant_id, hour);
VACUUM ANALYZE r_key, r_key_folded, r_nokey;
-- dense raw hours for tenant 99: 13,900 records/hour (10M per month) on 2026-12-05 10:00-12:00
INSERT INTO u_part (request_id,tenant_id,api_key_id,alias,provider,upstream_model,accelerator,endpoint,stream,status,upstream_status,upstream_response_id,input_tokens,cached_input_tokens,cache_write_tokens,output_tokens,reasoning_tokens,reasoning_source,flags,raw_usage,client_disconnected,ttft_us,latency_us,started_at,finished_at,recorded_at,serving_cost_usd,reasoning_cost_usd,spend_usd)
SELECT gen_random_uuid(), '00000000-0000-4000-8000-000000000099', (g%10)+1, 'alias-'||(g%5), 'openai','gpt-x','h100','chat.completions',true,'completed',200,'chatcmpl-x',(random()*2000)::int8,0,0,(random()*500)::int8,0,'none','[]','{"prompt_tokens": 1000, "completion_tokens": 300}',false,1000,20000,
  timestamptz '2026-12-05 10:00' + (g::float8/27800) * interval '2 hours', now(), now(), 0.001, 0, 0.002
FROM generate_series(0,27799) g;
VACUUM ANALYZE u_part;
