ALTER TABLE readings DROP CONSTRAINT readings_has_a_value;
ALTER TABLE readings DROP COLUMN sum, DROP COLUMN value_data, DROP COLUMN value_text, DROP COLUMN value_bool;
ALTER TABLE readings ALTER COLUMN value SET NOT NULL;
