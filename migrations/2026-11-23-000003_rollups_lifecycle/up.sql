-- readings_1m, the one-minute rollup per device and metric that dashboards read, and the
-- lifecycle (chunk size, compression, retention, rollup refresh) that Sluice applies from
-- broker.toml at start-up through sluice_configure(). TimescaleDB keeps readings_1m as a
-- continuous aggregate with its own jobs; without it Sluice does the same work itself:
-- partitions created ahead and dropped when old (sluice_maintain), and readings_1m
-- refreshed from the buckets that inserts touched (sluice_refresh_readings_1m).
DO $migration$
BEGIN
  IF (SELECT relkind FROM pg_class WHERE oid = 'readings'::regclass) = 'r' THEN  -- a hypertable
    -- WITH NO DATA: a continuous aggregate with data cannot be created in a transaction.
    -- materialized_only = false: queries see the newest minutes before the refresh job.
    EXECUTE $cagg$
      CREATE MATERIALIZED VIEW readings_1m
      WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
      SELECT time_bucket(INTERVAL '1 minute', time) AS bucket, device_id, metric,
             count(*) AS count, min(value) AS min, max(value) AS max, avg(value) AS avg,
             last(value, time) AS last
        FROM readings
       GROUP BY time_bucket(INTERVAL '1 minute', time), device_id, metric
      WITH NO DATA
    $cagg$;
  ELSE
    CREATE TABLE readings_1m (
      bucket    timestamptz      NOT NULL,
      device_id text             NOT NULL,
      metric    text             NOT NULL,
      count     bigint           NOT NULL,
      min       double precision,
      max       double precision,
      avg       double precision,
      last      double precision,
      PRIMARY KEY (device_id, metric, bucket)
    );
    CREATE INDEX readings_1m_bucket_idx ON readings_1m (bucket DESC);
    -- Which minutes changed since the last refresh: TimescaleDB's invalidation log, in
    -- small. A statement trigger sees each COPY or INSERT's new rows once, whoever wrote.
    CREATE TABLE readings_1m_dirty (
      device_id text        NOT NULL,
      metric    text        NOT NULL,
      bucket    timestamptz NOT NULL
    );
    CREATE FUNCTION sluice_mark_readings_1m() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
      INSERT INTO readings_1m_dirty (device_id, metric, bucket)
        SELECT DISTINCT device_id, metric, time_bucket(INTERVAL '1 minute', time) FROM new_rows;
      RETURN NULL;
    END
    $fn$;
    CREATE TRIGGER readings_1m_dirty AFTER INSERT ON readings
      REFERENCING NEW TABLE AS new_rows
      FOR EACH STATEMENT EXECUTE FUNCTION sluice_mark_readings_1m();
  END IF;
END
$migration$;

-- Recomputes the readings_1m rows of every minute written since the last call; returns
-- how many it wrote. Without TimescaleDB only (its refresh policy does this there).
CREATE FUNCTION sluice_refresh_readings_1m() RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
  written bigint;
BEGIN
  WITH dirty AS (
    DELETE FROM readings_1m_dirty RETURNING device_id, metric, bucket
  ), touched AS (
    SELECT DISTINCT device_id, metric, bucket FROM dirty
  ), fresh AS (
    SELECT t.bucket, t.device_id, t.metric, count(*) AS count, min(r.value) AS min,
           max(r.value) AS max, avg(r.value) AS avg,
           (array_agg(r.value ORDER BY r.time DESC))[1] AS last
      FROM touched t
      JOIN readings r ON r.device_id = t.device_id AND r.metric = t.metric
       AND r.time >= t.bucket AND r.time < t.bucket + INTERVAL '1 minute'
     GROUP BY t.bucket, t.device_id, t.metric
  ), upserted AS (
    INSERT INTO readings_1m (bucket, device_id, metric, count, min, max, avg, last)
    SELECT * FROM fresh
    ON CONFLICT (device_id, metric, bucket) DO UPDATE
      SET count = EXCLUDED.count, min = EXCLUDED.min, max = EXCLUDED.max,
          avg = EXCLUDED.avg, last = EXCLUDED.last
    RETURNING 1
  )
  SELECT count(*) INTO written FROM upserted;
  RETURN written;
END
$fn$;

-- The time range of each partition of `readings` (the default partition has none).
CREATE FUNCTION sluice_partitions()
RETURNS TABLE (name text, range_start timestamptz, range_end timestamptz)
LANGUAGE sql STABLE AS $fn$
  SELECT c.relname::text,
         substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \(''([^'']+)''\)')::timestamptz,
         substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
   WHERE i.inhparent = 'readings'::regclass
     AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
$fn$;

-- Without TimescaleDB: makes sure partitions of `chunk` cover up to `ahead` chunks past
-- `at`, each new one starting where the last ended (so a changed interval never overlaps),
-- and drops partitions (and default-partition rows) older than `retain` (NULL: keep all).
-- Rows already in the default partition move into a new partition that covers them.
CREATE FUNCTION sluice_maintain(chunk interval, ahead int, retain interval,
                                at timestamptz DEFAULT now())
RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
  next_start timestamptz;
  next_end timestamptz;
  part record;
  name text;
BEGIN
  -- Several writers may run this at once; one at a time is enough.
  PERFORM pg_advisory_xact_lock(7261002);
  SELECT max(range_end) INTO next_start FROM sluice_partitions();
  IF next_start IS NULL OR next_start < time_bucket(chunk, at) THEN
    next_start := time_bucket(chunk, at);
  END IF;
  WHILE next_start < at + chunk * ahead LOOP
    next_end := next_start + chunk;
    name := 'readings_p' || to_char(next_start AT TIME ZONE 'UTC', 'YYYYMMDD"t"HH24MISS');
    IF EXISTS (SELECT 1 FROM readings_default WHERE time >= next_start AND time < next_end) THEN
      EXECUTE format('CREATE TABLE %I (LIKE readings INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
      EXECUTE format('WITH moved AS (DELETE FROM readings_default WHERE time >= $1 AND time < $2 RETURNING *)
                      INSERT INTO %I SELECT * FROM moved', name) USING next_start, next_end;
      EXECUTE format('ALTER TABLE readings ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                     name, next_start, next_end);
    ELSE
      EXECUTE format('CREATE TABLE %I PARTITION OF readings FOR VALUES FROM (%L) TO (%L)',
                     name, next_start, next_end);
    END IF;
    next_start := next_end;
  END LOOP;
  IF retain IS NOT NULL THEN
    FOR part IN SELECT p.name FROM sluice_partitions() p WHERE p.range_end <= at - retain LOOP
      EXECUTE format('DROP TABLE %I', part.name);
    END LOOP;
    DELETE FROM readings_default WHERE time < at - retain;
  END IF;
END
$fn$;

-- Applies broker.toml's [storage] settings; safe to run at every start (NULL: off).
-- TimescaleDB: chunk interval for new chunks, compression and its policy, retention
-- policy, and readings_1m's refresh policy, each replaced so a changed setting takes.
-- Without it: the partitions and retention of sluice_maintain (compression has no
-- counterpart in plain PostgreSQL; readings_1m is refreshed by the service).
CREATE FUNCTION sluice_configure(chunk interval, compress_after interval, retain interval,
                                 rollup_refresh interval, rollup_lookback interval,
                                 partitions_ahead int)
RETURNS text LANGUAGE plpgsql AS $fn$
BEGIN
  IF retain IS NOT NULL AND rollup_lookback >= retain THEN
    RAISE EXCEPTION 'storage.rollup_lookback (%) must be shorter than storage.retain_for (%)',
      rollup_lookback, retain;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
    PERFORM sluice_maintain(chunk, partitions_ahead, retain);
    RETURN 'postgresql';
  END IF;
  PERFORM set_chunk_time_interval('readings', chunk);
  IF compress_after IS NOT NULL THEN
    IF NOT (SELECT compression_enabled FROM timescaledb_information.hypertables
             WHERE hypertable_schema = current_schema() AND hypertable_name = 'readings') THEN
      ALTER TABLE readings SET (timescaledb.compress,
        timescaledb.compress_segmentby = 'device_id',
        timescaledb.compress_orderby = 'metric, time DESC');
    END IF;
  END IF;
  PERFORM remove_compression_policy('readings', if_exists => true);
  IF compress_after IS NOT NULL THEN
    PERFORM add_compression_policy('readings', compress_after => compress_after);
  END IF;
  PERFORM remove_retention_policy('readings', if_exists => true);
  IF retain IS NOT NULL THEN
    PERFORM add_retention_policy('readings', drop_after => retain);
  END IF;
  PERFORM remove_continuous_aggregate_policy('readings_1m', if_exists => true);
  PERFORM add_continuous_aggregate_policy('readings_1m',
    start_offset => rollup_lookback, end_offset => INTERVAL '1 minute',
    schedule_interval => rollup_refresh);
  RETURN 'timescaledb';
END
$fn$;
