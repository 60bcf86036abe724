CREATE OR REPLACE FUNCTION ptime(q text, n int DEFAULT 30) RETURNS text AS $$
DECLARE j json; p float8[] := '{}'; e float8[] := '{}'; i int;
BEGIN
  FOR i IN 1..n LOOP
    EXECUTE 'EXPLAIN (ANALYZE, FORMAT JSON) ' || q INTO j;
    p := p || (j->0->>'Planning Time')::float8; e := e || (j->0->>'Execution Time')::float8;
  END LOOP;
  RETURN format('plan min %s med %s max %s ms | exec med %s ms',
    round((SELECT min(x) FROM unnest(p) x)::numeric,3), round((SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM unnest(p) x)::numeric,3),
    round((SELECT max(x) FROM unnest(p) x)::numeric,3), round((SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM unnest(e) x)::numeric,3));
END $$ LANGUAGE plpgsql;
