-- Readings, one row per device, metric and time. With TimescaleDB available this is a
-- hypertable; without it (Debian's PostgreSQL) a table range-partitioned by time plus a
-- time_bucket() over date_bin, so analysts' queries run unchanged on both. Sluice says
-- which in the setting sluice.backend (see lifecycle.rs); without it, TimescaleDB
-- whenever the server has it.
DO $migration$
BEGIN
  IF coalesce(current_setting('sluice.backend', true), '') = 'timescaledb'
     OR (coalesce(current_setting('sluice.backend', true), '') = ''
         AND EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')) THEN
    CREATE EXTENSION IF NOT EXISTS timescaledb;
    CREATE TABLE readings (
      time        timestamptz      NOT NULL,
      device_id   text             NOT NULL,
      metric      text             NOT NULL,
      value       double precision NOT NULL,
      unit        text,
      seq         bigint,
      received_at timestamptz      NOT NULL,
      ingested_at timestamptz      NOT NULL DEFAULT now(),
      UNIQUE (device_id, metric, time)
    );
    PERFORM create_hypertable('readings', by_range('time', INTERVAL '1 day'));
  ELSE
    CREATE TABLE readings (
      time        timestamptz      NOT NULL,
      device_id   text             NOT NULL,
      metric      text             NOT NULL,
      value       double precision NOT NULL,
      unit        text,
      seq         bigint,
      received_at timestamptz      NOT NULL,
      ingested_at timestamptz      NOT NULL DEFAULT now(),
      UNIQUE (device_id, metric, time)
    ) PARTITION BY RANGE (time);
    CREATE TABLE readings_default PARTITION OF readings DEFAULT;
    -- TimescaleDB makes this index itself.
    CREATE INDEX readings_time_idx ON readings (time DESC);
    -- TimescaleDB's time_bucket for the fallback path; origin 2000-01-03 (a Monday)
    -- matches TimescaleDB's bucket boundaries, weekly buckets included. Where a DBA
    -- created the extension anyway, its own serves.
    IF to_regprocedure('time_bucket(interval, timestamptz)') IS NULL THEN
      CREATE FUNCTION time_bucket(bucket_width interval, ts timestamptz) RETURNS timestamptz
        LANGUAGE sql IMMUTABLE PARALLEL SAFE
        AS $fn$ SELECT date_bin(bucket_width, ts, TIMESTAMPTZ '2000-01-03 00:00:00+00') $fn$;
    END IF;
  END IF;
END
$migration$;

-- The writer's Kafka progress, committed in the same transaction as the rows it wrote.
CREATE TABLE sluice_offsets (
  group_id    text   NOT NULL,
  topic       text   NOT NULL,
  partition   int    NOT NULL,
  next_offset bigint NOT NULL,
  PRIMARY KEY (group_id, topic, partition)
);
