CREATE OR REPLACE FUNCTION mkpart(t text, n int, step interval, first timestamptz) RETURNS void AS $$
DECLARE i int; lo timestamptz;
BEGIN
  EXECUTE format('CREATE TABLE %I (LIKE u_part INCLUDING DEFAULTS INCLUDING CONSTRAINTS) PARTITION BY RANGE (started_at)', t);
  EXECUTE format('ALTER TABLE %I ADD PRIMARY KEY (id, started_at)', t);
  EXECUTE format('CREATE INDEX ON %I (tenant_id, started_at, id)', t);
  EXECUTE format('CREATE TRIGGER imm BEFORE UPDATE OR DELETE ON %I FOR EACH ROW EXECUTE FUNCTION metering_usage_record_immutable()', t);
  FOR i IN 0..n-1 LOOP
    lo := first + step * i;
    EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)', t||'_'||i, t, lo, lo + step);
  END LOOP;
END $$ LANGUAGE plpgsql;
-- all end at 2027-01-01; data fills 2026 only
SELECT mkpart('p24', 24, '1 month', '2025-01-01');
SELECT mkpart('p36', 36, '1 month', '2024-01-01');
SELECT mkpart('p400', 400, '1 day', timestamptz '2027-01-01' - 400 * interval '1 day');
INSERT INTO p24 SELECT * FROM u_part WHERE id % 3 = 0;
INSERT INTO p36 SELECT * FROM p24; INSERT INTO p400 SELECT * FROM p24;
VACUUM ANALYZE p24, p36, p400;
