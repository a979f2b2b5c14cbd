-- The writers of each group that are alive: each renews its row while it runs, and the
-- partitions are dealt over the rows renewed within their lease (see bridge/src/lease.rs).
-- Each row carries its writer's own lease, so writers configured differently still agree
-- on who is alive.
CREATE TABLE sluice_writers (
  group_id   text        NOT NULL,
  member     text        NOT NULL,
  renewed_at timestamptz NOT NULL DEFAULT now(),
  lease      interval    NOT NULL,
  PRIMARY KEY (group_id, member)
);
