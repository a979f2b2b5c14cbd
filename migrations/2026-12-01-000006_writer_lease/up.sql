-- The writers of each group that are alive: each renews its row while it runs, and the
-- partitions are dealt over the rows renewed within the lease (see bridge/src/lease.rs).
CREATE TABLE sluice_writers (
  group_id   text        NOT NULL,
  member     text        NOT NULL,
  renewed_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (group_id, member)
);
