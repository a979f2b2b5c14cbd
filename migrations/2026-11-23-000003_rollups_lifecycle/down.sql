DROP FUNCTION IF EXISTS sluice_configure(interval, interval, interval, interval, interval, int);
DROP FUNCTION sluice_maintain(interval, int, interval, timestamptz);
DROP FUNCTION sluice_partitions();
DROP FUNCTION sluice_refresh_readings_1m();
DO $migration$
BEGIN
  IF (SELECT relkind FROM pg_class WHERE oid = 'readings'::regclass) = 'r' THEN  -- a hypertable
    DROP MATERIALIZED VIEW readings_1m;
  ELSE
    DROP TRIGGER readings_1m_dirty ON readings;
    DROP FUNCTION sluice_mark_readings_1m();
    DROP TABLE readings_1m_dirty;
    DROP TABLE readings_1m;
  END IF;
END
$migration$;
