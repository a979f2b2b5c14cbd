-- SenML readings need not be numbers: a boolean (vb), a string (vs), opaque data (vd) or
-- an integrated sum (s) is stored in a column of its own type, so numeric queries on
-- `value` stay plain and fast, and nothing a device sent is dropped.
ALTER TABLE readings ALTER COLUMN value DROP NOT NULL;
ALTER TABLE readings ADD COLUMN value_bool boolean;
ALTER TABLE readings ADD COLUMN value_text text;
ALTER TABLE readings ADD COLUMN value_data bytea;
ALTER TABLE readings ADD COLUMN sum double precision;
ALTER TABLE readings ADD CONSTRAINT readings_has_a_value CHECK (
  value IS NOT NULL OR value_bool IS NOT NULL OR value_text IS NOT NULL
  OR value_data IS NOT NULL OR sum IS NOT NULL
);
