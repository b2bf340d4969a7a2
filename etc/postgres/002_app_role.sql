-- A least-privilege role for the server: it inserts and reads its rows, draws from its sequence, and holds
-- advisory locks / LISTEN (which need no grant). It cannot alter or drop anything. The schema (001) is applied by
-- the database owner; a server connecting as gstratum_app finds the tables present and skips DDL.
--   ALTER ROLE gstratum_app LOGIN PASSWORD '...';   -- then run the server with
--   --database-url postgresql://gstratum_app:...@host/db
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'gstratum_app') THEN
        CREATE ROLE gstratum_app NOLOGIN;
    END IF;
END
$$;
GRANT SELECT, INSERT ON connections, disconnections, subscriptions, authorizations, jobs, shares, blocks,
    admin_actions TO gstratum_app;
GRANT SELECT, INSERT, UPDATE ON worker_minutes TO gstratum_app;   -- rollups are upserted
GRANT USAGE ON SEQUENCE extranonce1_seq TO gstratum_app;
-- the block submitter and keeper: pending -> submitted / rejected / stale, submitted <-> orphaned -> confirmed
GRANT UPDATE (status, results, attempts, reason, updated_at) ON blocks TO gstratum_app;
