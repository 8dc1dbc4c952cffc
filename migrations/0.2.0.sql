-- 0.2.0: per-table objects belong to the table's owner, a worker role, and the model that
-- made a table's stored vectors.

-- The per-table objects are named mgte.<prefix>_embeddings, _queue, _failed and the
-- functions mgte.<prefix>_on_change, _claim, _settle, _requeue, _status.
ALTER TABLE mgte.enabled
    ADD COLUMN prefix text,
    ADD COLUMN model text;
COMMENT ON COLUMN mgte.enabled.model IS
    'the model whose vectors the table''s embeddings hold (the id `mgte serve` reports); NULL until the first is stored';
-- Mode 'logical': no trigger; mgte worker reads the table's changes through logical decoding.
ALTER TABLE mgte.enabled DROP CONSTRAINT enabled_mode_check,
    ADD CONSTRAINT enabled_mode_check CHECK (mode IN ('async', 'sync', 'logical'));

-- Proof that the acting role owns a table, for the SECURITY DEFINER functions that change
-- mgte's catalog: they cannot see the caller's current_user, so the caller first inserts a
-- row here, which row-level security admits only for a table current_user owns (or is a
-- member of the owning role of), and the definer function consumes the row of its own
-- backend and transaction. The backend and transaction come from column defaults that no
-- caller may set.
CREATE TABLE mgte.authorizations (
    tbl regclass NOT NULL,
    backend integer NOT NULL DEFAULT pg_catalog.pg_backend_pid(),
    xact_start timestamptz NOT NULL DEFAULT pg_catalog.transaction_timestamp()
);
COMMENT ON TABLE mgte.authorizations IS
    'short-lived proofs that the acting role owns a table, consumed by mgte''s SECURITY DEFINER functions';
ALTER TABLE mgte.authorizations ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON mgte.authorizations FOR INSERT TO PUBLIC
    WITH CHECK (pg_catalog.pg_has_role(current_user,
                                       (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = tbl), 'USAGE'));
GRANT INSERT (tbl) ON mgte.authorizations TO PUBLIC;

-- Roles are cluster-wide, and another database may have created them already.
DO $$
BEGIN
    -- `mgte worker` connects as a member of this role: it may claim and settle the queue of
    -- every enabled table (through functions that run as each table's owner), nothing else.
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'mgte_worker') THEN
        CREATE ROLE mgte_worker NOLOGIN;
    END IF;
    -- Members may choose the model server's socket for their session (SET mgte.socket_path);
    -- everyone else uses the one the DBA configured for the database, role or cluster.
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'mgte_choose_socket') THEN
        CREATE ROLE mgte_choose_socket NOLOGIN;
    END IF;
END
$$;

-- A table being re-embedded with another model (mgte_reembed): the second set of objects
-- that its workers fill, while searches keep reading the first, until it takes over.
CREATE TABLE mgte.reembeddings (
    tbl regclass PRIMARY KEY REFERENCES mgte.enabled ON DELETE CASCADE,
    prefix text NOT NULL UNIQUE,
    model text NOT NULL,
    embeddings regclass NOT NULL,
    queue regclass NOT NULL,
    failed regclass NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE mgte.reembeddings IS 'tables being re-embedded with another model (see mgte_reembed)';
SELECT pg_catalog.pg_extension_config_dump('mgte.reembeddings', '');
GRANT SELECT ON mgte.reembeddings TO PUBLIC;

-- Tables written in ways that no trigger and no logical decoding sees (partitions attached,
-- detached or dropped, a column rewritten by ALTER TABLE, or anything mgte_resync is called
-- for). mgte's event triggers record the table here, since they run as the installer and must
-- not run its owner's functions; a worker then brings the table up to date whole (its
-- _changed function) and deletes the row, in one transaction.
CREATE TABLE mgte.compare_requests (
    tbl regclass PRIMARY KEY REFERENCES mgte.enabled ON DELETE CASCADE,
    requested_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE mgte.compare_requests IS
    'tables written in ways no trigger saw, for a worker to compare whole with their embeddings';
SELECT pg_catalog.pg_extension_config_dump('mgte.compare_requests', '');
GRANT SELECT ON mgte.compare_requests TO PUBLIC;  -- for mgte_status, like mgte.enabled
GRANT DELETE ON mgte.compare_requests TO mgte_worker;

-- The partitions that carry an enabled table's triggers, with that table: a partition that is
-- dropped no longer says whose it was (sql_drop sees it gone), and this does.
CREATE TABLE mgte.partitions (
    partition regclass PRIMARY KEY,
    tbl regclass NOT NULL
);
COMMENT ON TABLE mgte.partitions IS 'the partitions of enabled tables, which carry their triggers';
SELECT pg_catalog.pg_extension_config_dump('mgte.partitions', '');

-- Tables enabled under 0.1.0 get 0.2.0's per-table objects. Their triggers call
-- mgte._on_change(), dropped below, and their new objects are made by functions of sql/,
-- which comes after the migrations: so here each table's triggers go, and its configuration,
-- embeddings, queue and dead letters move aside to schema mgte_upgrade (renamed after the
-- table's oid, so that no name there or in schema mgte is taken), where sql/upgrade.sql
-- finds them. The search view stays: its definition is 0.2.0's. A fresh install has
-- nothing to move.
DO $$
DECLARE
    cfg mgte.enabled;
    event text;
    saved_path text := pg_catalog.current_setting('search_path');
BEGIN
    IF NOT EXISTS (SELECT FROM mgte.enabled) THEN
        RETURN;
    END IF;
    -- Only pg_catalog's functions and operators, never one a user put in the extension's schema.
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    CREATE SCHEMA mgte_upgrade;
    -- Each owner's copy of her queue entries reads her set-aside queue (sql/upgrade.sql).
    GRANT USAGE ON SCHEMA mgte_upgrade TO PUBLIC;
    CREATE TABLE mgte_upgrade.enabled AS SELECT * FROM mgte.enabled;
    FOR cfg IN SELECT * FROM mgte.enabled LOOP
        FOREACH event IN ARRAY ARRAY['insert', 'update', 'delete', 'truncate'] LOOP
            EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'mgte_' || event, cfg.tbl);
        END LOOP;
        EXECUTE format('ALTER TABLE %s RENAME TO %I', cfg.embeddings, cfg.tbl::oid || '_embeddings');
        EXECUTE format('ALTER TABLE %s RENAME TO %I', cfg.queue, cfg.tbl::oid || '_queue');
        EXECUTE format('ALTER TABLE %s RENAME TO %I', cfg.failed, cfg.tbl::oid || '_failed');
        EXECUTE format('ALTER TABLE %s SET SCHEMA mgte_upgrade', cfg.embeddings);
        EXECUTE format('ALTER TABLE %s SET SCHEMA mgte_upgrade', cfg.queue);
        EXECUTE format('ALTER TABLE %s SET SCHEMA mgte_upgrade', cfg.failed);
    END LOOP;
    DELETE FROM mgte.enabled;
    PERFORM pg_catalog.set_config('search_path', saved_path, true);
END
$$;

-- Functions of 0.1.0 that 0.2.0 replaces with others, or whose result type changed (which
-- CREATE OR REPLACE cannot do).
DROP FUNCTION IF EXISTS mgte._on_change();
DROP FUNCTION IF EXISTS mgte._store_statement(mgte.enabled, text);
DROP FUNCTION IF EXISTS mgte._settle_statement(mgte.enabled, text);
DROP FUNCTION IF EXISTS mgte._claim(regclass, integer, double precision);
DROP FUNCTION IF EXISTS mgte._complete(regclass, jsonb);
DROP FUNCTION IF EXISTS mgte._fail(regclass, jsonb);
DROP FUNCTION IF EXISTS mgte._release(regclass, jsonb, text);
DROP FUNCTION IF EXISTS mgte._encode(text[], integer, boolean, integer, integer, boolean);
DROP FUNCTION IF EXISTS mgte._create_search_view(mgte.enabled);
DROP FUNCTION IF EXISTS mgte._search_statement(mgte.enabled, integer, integer, text, double precision, integer,
                                               integer, jsonb, boolean);
DROP FUNCTION IF EXISTS mgte._search_run(text, vector, sparsevec, jsonb, integer, integer, double precision,
                                         integer, integer, jsonb, text);
DROP FUNCTION IF EXISTS mgte_status(regclass);
