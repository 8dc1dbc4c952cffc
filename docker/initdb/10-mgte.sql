-- Run once by the postgres image's entrypoint (psql, autocommit) on a fresh data directory,
-- in the database POSTGRES_DB. Other databases need their own CREATE EXTENSION.
CREATE EXTENSION IF NOT EXISTS mgte CASCADE;
-- The socket of the mgte container, shared through the mgte-run volume (this is also the
-- default). Per database: ALTER SYSTEM refuses a setting that no loaded module defines.
SELECT format('ALTER DATABASE %I SET mgte.socket_path = %L', current_database(), '/run/mgte/mgte.sock') \gexec
