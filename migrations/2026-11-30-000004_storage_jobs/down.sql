-- Leaves no sluice_configure behind: revert migration 3 next, or run this one up again.
DROP FUNCTION sluice_configure(interval, interval, interval, interval, interval, int,
                               interval, interval);
DROP FUNCTION sluice_trim_readings_1m(interval, timestamptz);
DROP FUNCTION sluice_keep_policy(text, text, regclass, interval);
DROP FUNCTION sluice_jobs();
DROP TABLE sluice_job_runs;
DROP FUNCTION sluice_on_timescaledb();
