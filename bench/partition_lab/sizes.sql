SELECT 'flat' AS v, pg_relation_size('metering_usagerecord')/1e6 AS heap_b_per_row,
  pg_relation_size('metering_usagerecord_request_id_key')/1e6 AS reqid_idx, pg_relation_size('metering_usagerecord_pkey')/1e6 AS pk_idx,
  pg_relation_size('usage_tenant_time')/1e6 AS tenant_idx
UNION ALL
SELECT 'part', (SELECT sum(pg_relation_size(relid)) FROM pg_partition_tree('u_part') WHERE isleaf)/1e6,
  NULL, (SELECT sum(pg_relation_size(relid)) FROM pg_partition_tree('u_part_pkey') WHERE isleaf)/1e6,
  (SELECT sum(pg_relation_size(relid)) FROM pg_partition_tree('u_part_tenant_time') WHERE isleaf)/1e6
UNION ALL
SELECT 'ids table', pg_relation_size('usage_request_ids')/1e6, pg_relation_size('usage_request_ids_pkey')/1e6, NULL, NULL
UNION ALL
SELECT 'partb (reqid,started_at) uniq', NULL,
 (SELECT sum(pg_relation_size(relid)) FROM pg_partition_tree('u_partb_request_id_started_at_key') WHERE isleaf)/1e6, NULL, NULL;
