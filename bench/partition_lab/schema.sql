-- partitioned copy of the real ledger table (monthly, 2025-01 .. 2026-12 = 24 partitions)
CREATE TABLE u_part (LIKE metering_usagerecord INCLUDING DEFAULTS INCLUDING CONSTRAINTS) PARTITION BY RANGE (started_at);
ALTER TABLE u_part ALTER COLUMN id DROP IDENTITY IF EXISTS;
CREATE SEQUENCE u_part_id_seq; ALTER TABLE u_part ALTER COLUMN id SET DEFAULT nextval('u_part_id_seq');
ALTER TABLE u_part ADD PRIMARY KEY (id, started_at);
CREATE INDEX u_part_tenant_time ON u_part (tenant_id, started_at, id);
CREATE TRIGGER u_part_immutable BEFORE UPDATE OR DELETE ON u_part FOR EACH ROW EXECUTE FUNCTION metering_usage_record_immutable();
DO $$ DECLARE m date := '2025-01-01'; BEGIN
  WHILE m < '2027-01-01' LOOP
    EXECUTE format('CREATE TABLE u_part_%s PARTITION OF u_part FOR VALUES FROM (%L) TO (%L)', to_char(m,'YYYYMM'), m, m + interval '1 month');
    m := m + interval '1 month';
  END LOOP; END $$;
CREATE TABLE usage_request_ids (request_id uuid PRIMARY KEY, started_at timestamptz NOT NULL);
-- option (b)/(c) table: same as u_part plus unique (request_id, started_at)
CREATE TABLE u_partb (LIKE u_part INCLUDING ALL) PARTITION BY RANGE (started_at);
ALTER TABLE u_partb ALTER COLUMN id SET DEFAULT nextval('u_part_id_seq');
ALTER TABLE u_partb ADD UNIQUE (request_id, started_at);
DO $$ DECLARE m date := '2025-01-01'; BEGIN
  WHILE m < '2027-01-01' LOOP
    EXECUTE format('CREATE TABLE u_partb_%s PARTITION OF u_partb FOR VALUES FROM (%L) TO (%L)', to_char(m,'YYYYMM'), m, m + interval '1 month');
    m := m + interval '1 month';
  END LOOP; END $$;
