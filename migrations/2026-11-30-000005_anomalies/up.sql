-- What the writer's anomaly detector found (bridge/src/anomaly.rs): one row per device,
-- metric, reading time and kind, written in the same transaction as the readings. A
-- hypertable on the TimescaleDB path, a plain table without it; the same columns on both.
CREATE TABLE anomalies (
  time        timestamptz      NOT NULL,
  device_id   text             NOT NULL,
  metric      text             NOT NULL,
  -- spike, stuck, drift or dropout
  kind        text             NOT NULL,
  -- For a dropout: seconds between readings (the gap, the typical interval, 0 and the
  -- longest gap not flagged); otherwise the metric's units.
  value       double precision NOT NULL,
  expected    double precision NOT NULL,
  low         double precision NOT NULL,
  high        double precision NOT NULL,
  score       double precision NOT NULL,
  detected_at timestamptz      NOT NULL DEFAULT now(),
  UNIQUE (device_id, metric, time, kind)
);

DO $migration$
BEGIN
  IF sluice_on_timescaledb() THEN
    -- Also makes the (time DESC) index.
    PERFORM create_hypertable('anomalies', by_range('time', INTERVAL '7 days'));
  ELSE
    CREATE INDEX anomalies_time_idx ON anomalies (time DESC);
  END IF;
END
$migration$;
