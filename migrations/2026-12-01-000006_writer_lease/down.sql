DROP TABLE sluice_writers;
