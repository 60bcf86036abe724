\set VERBOSITY terse
\echo -- 1. UPDATE/DELETE through the parent and directly on a partition
UPDATE u_part SET input_tokens = 0 WHERE started_at >= '2026-11-01' AND started_at < '2026-11-02';
DELETE FROM u_part_202611 WHERE started_at < '2026-11-02';
\echo -- 2. are the triggers cloned? (tgparentid <> 0 on partitions)
SELECT tgrelid::regclass, tgname, tgparentid <> 0 AS cloned FROM pg_trigger WHERE tgname = 'u_part_immutable' AND tgrelid::regclass::text IN ('u_part','u_part_202611');
\echo -- 3. a partition created later inherits it
CREATE TABLE u_part_202701 PARTITION OF u_part FOR VALUES FROM ('2027-01-01') TO ('2027-02-01');
SELECT count(*) AS trig_on_new FROM pg_trigger WHERE tgrelid = 'u_part_202701'::regclass AND NOT tgisinternal;
\echo -- 4. can the cloned trigger be dropped / disabled on one partition?
DROP TRIGGER u_part_immutable ON u_part_202611;
BEGIN; ALTER TABLE u_part_202611 DISABLE TRIGGER u_part_immutable; SELECT 'disable allowed' ; ROLLBACK;
\echo -- 5. TRUNCATE is not a row event: allowed on a partition and on the parent
BEGIN; TRUNCATE u_part_202601; SELECT 'truncate partition allowed'; ROLLBACK;
\echo -- 5b. statement-level BEFORE TRUNCATE on parent: does it cover a direct partition TRUNCATE?
CREATE FUNCTION no_truncate() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'ledger truncate refused' USING ERRCODE='restrict_violation'; END $$ LANGUAGE plpgsql;
CREATE TRIGGER u_part_no_truncate BEFORE TRUNCATE ON u_part FOR EACH STATEMENT EXECUTE FUNCTION no_truncate();
BEGIN; TRUNCATE u_part; ROLLBACK;
BEGIN; TRUNCATE u_part_202601; SELECT 'direct partition truncate still allowed'; ROLLBACK;
\echo -- 6. DETACH is DDL: allowed; the detached table LOSES the cloned trigger (mutable!)
BEGIN;
ALTER TABLE u_part DETACH PARTITION u_part_202501;
SELECT count(*) AS triggers_left_on_detached FROM pg_trigger WHERE tgrelid = 'u_part_202501'::regclass AND NOT tgisinternal;
INSERT INTO u_part_202501 SELECT * FROM u_part_202612 LIMIT 1;
UPDATE u_part_202501 SET input_tokens = 1 ; SELECT 'update on detached allowed';
ROLLBACK;
\echo -- 7. DROP of a partition: allowed (DDL)
BEGIN; DROP TABLE u_part_202502; SELECT 'drop partition allowed'; ROLLBACK;
\echo -- 8. DETACH CONCURRENTLY (PG14+) outside a transaction block, with a default partition absent
ALTER TABLE u_part DETACH PARTITION u_part_202503 CONCURRENTLY;
ALTER TABLE u_part ATTACH PARTITION u_part_202503 FOR VALUES FROM ('2025-03-01') TO ('2025-04-01');
SELECT count(*) AS trig_after_reattach FROM pg_trigger WHERE tgrelid = 'u_part_202503'::regclass AND NOT tgisinternal;
\echo -- 9. event trigger can refuse DROP/DETACH of ledger tables unless a GUC is set (sketch check)
