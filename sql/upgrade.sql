-- The last of sql/ (extension/Makefile puts it there, after every function it uses): gives
-- each table that an update's migration set aside in schema mgte_upgrade (see
-- migrations/0.2.0.sql) this release's per-table objects, exactly those mgte_enable makes,
-- puts its embeddings, dead letters and queue entries back, and drops the schema. Nothing is
-- set aside on a fresh install, nor when sql/ runs again, and then this does nothing.
--
-- It runs as the installer, inside ALTER EXTENSION mgte UPDATE, and keeps the rule of mgte's
-- SECURITY DEFINER functions (see sql/auto_embed.sql): DDL only (mgte._create_set, and
-- renaming, moving and handing over the set-aside tables), never a row of a per-table table
-- written or a key compared as the installer. The embeddings (with their indexes) and the
-- dead letters keep their tables, which take the place of the new, empty ones. The queue's
-- shape changed, so its entries are copied, by a function that runs as the table's owner
-- and is dropped after: code of hers that the copy evaluates (a domain CHECK of the key, its
-- operators) runs with her rights, and inside a SECURITY DEFINER function it cannot SET ROLE
-- back to the installer.
DO $$
DECLARE
    held mgte.enabled;
    cfg mgte.enabled;
    owner text;
    pair regclass[];
    name text;
    comment text;
    copier text;
    fn text;
    saved_path text := pg_catalog.current_setting('search_path');
BEGIN
    IF pg_catalog.to_regnamespace('mgte_upgrade') IS NULL THEN
        RETURN;
    END IF;
    -- Only pg_catalog's functions and operators, never one a user put in the extension's
    -- schema (before the update, or from the code the copies below run as her).
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    -- In the order they were enabled: each table gets the prefix mgte_enable would give it.
    FOR held IN EXECUTE 'SELECT * FROM mgte_upgrade.enabled ORDER BY enabled_at, tbl::oid' LOOP
        cfg := held;
        owner := mgte._owner(cfg.tbl);
        EXECUTE format('SELECT model FROM %s LIMIT 1', held.embeddings) INTO cfg.model;
        cfg.prefix := mgte._free_prefix(cfg.tbl);
        cfg := mgte._create_set(cfg, 'mgte_');

        FOREACH pair SLICE 1 IN ARRAY ARRAY[[cfg.embeddings, held.embeddings], [cfg.failed, held.failed]] LOOP
            comment := obj_description(pair[1], 'pg_class');
            name := (SELECT relname FROM pg_catalog.pg_class WHERE oid = pair[1]);
            EXECUTE format('DROP TABLE %s', pair[1]);
            EXECUTE format('ALTER TABLE %s RENAME TO %I', pair[2], name);
            EXECUTE format('ALTER TABLE %s SET SCHEMA mgte', pair[2]);
            EXECUTE format('ALTER TABLE %s OWNER TO %I', pair[2], owner);
            EXECUTE format('COMMENT ON TABLE %s IS %L', pair[2], comment);
        END LOOP;
        cfg.embeddings := held.embeddings;
        cfg.failed := held.failed;

        -- Entries of an old worker's lease are claimable at once: that worker is gone with
        -- its functions. attempts start again at 0: 0.1.0 counted claims, 0.2.0 counts the
        -- failures of a text alone, and a count of claims would dead-letter texts early.
        EXECUTE format('ALTER TABLE %s OWNER TO %I', held.queue, owner);
        copier := format('mgte.%I', cfg.prefix || '_upgrade');
        EXECUTE format('CREATE FUNCTION %s() RETURNS void LANGUAGE sql SECURITY DEFINER '
                       'SET search_path = pg_catalog, pg_temp AS %L', copier,
                       format('INSERT INTO %s (%s, enqueued_at, last_error) SELECT %s, enqueued_at, last_error FROM %s',
                              cfg.queue, mgte._keys(cfg), mgte._keys(cfg), held.queue));
        EXECUTE format('REVOKE ALL ON FUNCTION %s() FROM PUBLIC', copier);
        EXECUTE format('ALTER FUNCTION %s() OWNER TO %I', copier, owner);
        EXECUTE format('SELECT %s()', copier);
        EXECUTE format('DROP FUNCTION %s()', copier);
        EXECUTE format('DROP TABLE %s', held.queue);

        -- Created inside ALTER EXTENSION, the new objects would count as the extension's own
        -- (dumped with it, dropped with it); mgte_enable's are the table's alone.
        EXECUTE format('ALTER EXTENSION mgte DROP TABLE %s', cfg.queue);
        FOR fn IN SELECT unnest(mgte._function_names()) LOOP
            EXECUTE format('ALTER EXTENSION mgte DROP FUNCTION %s', mgte._function(cfg, fn, true));
        END LOOP;
        INSERT INTO mgte.enabled SELECT cfg.*;
        PERFORM pg_catalog.pg_notify('mgte', cfg.tbl::text);
    END LOOP;
    DROP SCHEMA mgte_upgrade CASCADE;
    PERFORM pg_catalog.set_config('search_path', saved_path, true);
END
$$;
