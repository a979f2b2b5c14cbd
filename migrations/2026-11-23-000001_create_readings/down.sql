DROP TABLE IF EXISTS sluice_offsets;
DROP TABLE IF EXISTS readings;
DROP FUNCTION IF EXISTS time_bucket(interval, timestamptz);
