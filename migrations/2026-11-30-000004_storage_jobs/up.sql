-- The storage lifecycle, second version: concurrent starts serialised; TimescaleDB's jobs
-- kept across restarts (changed settings applied in place with alter_job, so job ids and
-- their run history survive); readings_1m compressed (TimescaleDB) and retained on its
-- own; the jobs' state readable for metrics and /health (sluice_jobs), with Sluice's own
-- runs of them (sluice_job_runs).
DROP FUNCTION sluice_configure(interval, interval, interval, interval, interval, int);

-- Which path the database is on: readings is a hypertable (a plain table to PostgreSQL)
-- or a partitioned table. Not whether the extension exists: a DBA may have created it in
-- a database that Sluice was told to keep plain.
CREATE FUNCTION sluice_on_timescaledb() RETURNS boolean LANGUAGE sql STABLE AS $fn$
  SELECT relkind = 'r' FROM pg_class WHERE oid = 'readings'::regclass
$fn$;

-- When Sluice last ran a TimescaleDB job itself (CALL run_job, which TimescaleDB's own
-- job_stats does not record), so that every Sluice process knows.
CREATE TABLE sluice_job_runs (
  job_id       int         PRIMARY KEY,
  succeeded_at timestamptz NOT NULL
);

-- TimescaleDB's jobs for readings and readings_1m, named as [storage] names them, with
-- their state. Empty without TimescaleDB. plpgsql, so that it can be created without it.
CREATE FUNCTION sluice_jobs()
RETURNS TABLE (job text, job_id int, schedule_interval interval, config jsonb,
               scheduled boolean, running boolean, next_start timestamptz,
               last_run_status text, last_successful_finish timestamptz,
               last_run_duration interval, total_runs bigint, total_failures bigint,
               sluice_success timestamptz)
LANGUAGE plpgsql STABLE AS $fn$
BEGIN
  IF NOT sluice_on_timescaledb() THEN
    RETURN;
  END IF;
  RETURN QUERY
    SELECT CASE WHEN j.hypertable_name = 'readings' THEN '' ELSE 'rollup_' END ||
           CASE j.proc_name WHEN 'policy_compression' THEN 'compression'
                            WHEN 'policy_retention' THEN 'retention'
                            ELSE 'refresh' END,
           j.job_id, j.schedule_interval, j.config, j.scheduled,
           -- A job that has run before shows next_start -infinity from its launch on.
           coalesce(s.job_status = 'Running'
                    OR (s.job_id IS NOT NULL AND j.next_start = '-infinity'), false),
           -- TimescaleDB says -infinity for "never"; NULL here.
           NULLIF(j.next_start, '-infinity'), s.last_run_status,
           NULLIF(s.last_successful_finish, '-infinity'), s.last_run_duration,
           s.total_runs, s.total_failures, r.succeeded_at
      FROM timescaledb_information.jobs j
      LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
      LEFT JOIN sluice_job_runs r ON r.job_id = j.job_id
     WHERE j.proc_name IN ('policy_compression', 'policy_retention',
                           'policy_refresh_continuous_aggregate')
       AND j.hypertable_schema = current_schema()
       AND j.hypertable_name IN ('readings', 'readings_1m');
END
$fn$;

-- Makes the compression or retention policy `kind` on `relation` match `setting`
-- (NULL: no policy): added when missing, its setting changed in place when it differs.
CREATE FUNCTION sluice_keep_policy(job_name text, kind text, relation regclass,
                                   setting interval)
RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
  key text := CASE kind WHEN 'compression' THEN 'compress_after' ELSE 'drop_after' END;
  existing record;
BEGIN
  SELECT j.job_id, j.config INTO existing FROM sluice_jobs() j WHERE j.job = job_name;
  IF setting IS NULL THEN
    EXECUTE format('SELECT remove_%s_policy($1, if_exists => true)', kind) USING relation;
  ELSIF existing.job_id IS NULL THEN
    EXECUTE format('SELECT add_%s_policy($1, $2)', kind) USING relation, setting;
  ELSIF (existing.config ->> key)::interval IS DISTINCT FROM setting THEN
    PERFORM alter_job(existing.job_id,
      config => jsonb_set(existing.config, ARRAY[key], to_jsonb(setting::text)));
  END IF;
END
$fn$;

-- Without TimescaleDB: drops readings_1m rows older than `retain` (NULL: keep all), as
-- sluice_maintain does for readings.
-- plpgsql: where readings_1m is TimescaleDB's view, the body is never checked or run.
CREATE FUNCTION sluice_trim_readings_1m(retain interval, at timestamptz DEFAULT now())
RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
  DELETE FROM readings_1m WHERE retain IS NOT NULL AND bucket < at - retain;
END
$fn$;

-- Applies broker.toml's [storage] settings; safe to run at every start, by several
-- processes at once (NULL: off). TimescaleDB: chunk interval for new chunks, compression
-- and retention of readings and of readings_1m, and readings_1m's refresh, each job kept
-- and changed in place. Without it: sluice_maintain's partitions and retention
-- (compression has no counterpart in plain PostgreSQL; readings_1m is refreshed by the
-- service).
CREATE FUNCTION sluice_configure(chunk interval, compress_after interval, retain interval,
                                 rollup_refresh interval, rollup_lookback interval,
                                 partitions_ahead int, rollup_compress_after interval,
                                 rollup_retain interval)
RETURNS text LANGUAGE plpgsql AS $fn$
DECLARE
  refresh record;
BEGIN
  -- TimescaleDB's catalog rows (chunk interval, jobs) fail with "tuple concurrently
  -- updated" when two starts change them at once.
  PERFORM pg_advisory_xact_lock(7261002);
  IF NOT sluice_on_timescaledb() THEN
    PERFORM sluice_maintain(chunk, partitions_ahead, retain);
    PERFORM sluice_trim_readings_1m(rollup_retain);
    RETURN 'postgres';
  END IF;
  IF (SELECT d.time_interval FROM timescaledb_information.dimensions d
       WHERE d.hypertable_schema = current_schema() AND d.hypertable_name = 'readings'
         AND d.column_name = 'time') IS DISTINCT FROM chunk THEN
    PERFORM set_chunk_time_interval('readings', chunk);
  END IF;
  IF compress_after IS NOT NULL AND NOT (
      SELECT h.compression_enabled FROM timescaledb_information.hypertables h
       WHERE h.hypertable_schema = current_schema() AND h.hypertable_name = 'readings') THEN
    ALTER TABLE readings SET (timescaledb.compress,
      timescaledb.compress_segmentby = 'device_id',
      timescaledb.compress_orderby = 'metric, time DESC');
  END IF;
  PERFORM sluice_keep_policy('compression', 'compression', 'readings', compress_after);
  PERFORM sluice_keep_policy('retention', 'retention', 'readings', retain);

  SELECT j.job_id, j.config, j.schedule_interval INTO refresh
    FROM sluice_jobs() j WHERE j.job = 'rollup_refresh';
  IF refresh.job_id IS NULL THEN
    PERFORM add_continuous_aggregate_policy('readings_1m',
      start_offset => rollup_lookback, end_offset => INTERVAL '1 minute',
      schedule_interval => rollup_refresh);
  ELSIF (refresh.config ->> 'start_offset')::interval IS DISTINCT FROM rollup_lookback
     OR refresh.schedule_interval IS DISTINCT FROM rollup_refresh THEN
    PERFORM alter_job(refresh.job_id, schedule_interval => rollup_refresh,
      config => jsonb_set(refresh.config, '{start_offset}', to_jsonb(rollup_lookback::text)));
  END IF;
  IF rollup_compress_after IS NOT NULL AND NOT (
      SELECT c.compression_enabled FROM timescaledb_information.continuous_aggregates c
       WHERE c.view_schema = current_schema() AND c.view_name = 'readings_1m') THEN
    ALTER MATERIALIZED VIEW readings_1m SET (timescaledb.compress = true,
      timescaledb.compress_segmentby = 'device_id',
      timescaledb.compress_orderby = 'metric, bucket DESC');
  END IF;
  PERFORM sluice_keep_policy('rollup_compression', 'compression', 'readings_1m',
                             rollup_compress_after);
  PERFORM sluice_keep_policy('rollup_retention', 'retention', 'readings_1m', rollup_retain);
  RETURN 'timescaledb';
END
$fn$;
