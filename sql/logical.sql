-- Logical mode (mgte_enable(..., mode => 'logical')): no trigger on the table. Its writes
-- reach the queue through PostgreSQL's logical decoding instead, so a writer pays for its
-- own row and nothing else. The pieces:
--   publication mgte_changes  the tables in logical mode, their key columns only, published
--                             as the partitioned table for a partition's rows
--   slot mgte_<database oid>  one pgoutput slot per database, which `mgte worker` creates
--                             when it first finds a table in logical mode, and reads
--   <prefix>_changed(keys)    the per-table function (sql/auto_embed.sql) the worker hands
--                             the decoded keys to: it compares each row as it is NOW with
--                             what is stored and queued, so applying a key twice, late, or
--                             with no key at all (keys NULL: the whole table, after the
--                             slot was made or lost) always ends in the same state.
-- The worker peeks at the slot, applies what it read, and only then advances the slot: a
-- worker that dies in between reads the same changes again, which is harmless.
--
-- Reading a slot needs the REPLICATION attribute; the functions below have it (they belong
-- to the installer) and hand mgte_worker what this database's slot decodes from
-- mgte_changes and nothing else. Decoding runs no code a table owner controls: the key
-- columns are printed by their types' output functions, which only a superuser defines.

-- The slot of this database: slot names are cluster-wide.
CREATE OR REPLACE FUNCTION mgte._logical_slot()
RETURNS name
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ('mgte_' || oid)::name FROM pg_catalog.pg_database WHERE datname = current_database()
$$;

-- Why `tbl` cannot be in logical mode, or NULL. pgoutput sends a row's old key on UPDATE
-- and DELETE as its replica identity, and PostgreSQL refuses those writes when the
-- published columns (the key) do not cover it.
CREATE OR REPLACE FUNCTION mgte._replica_identity_problem(tbl regclass, key_columns name[])
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    identity "char" := (SELECT relreplident FROM pg_catalog.pg_class WHERE oid = tbl);
    index_columns name[];
BEGIN
    IF identity IN ('d', 'i') THEN
        SELECT array_agg(a.attname) INTO index_columns
        FROM pg_catalog.pg_index i
        CROSS JOIN LATERAL unnest(i.indkey) AS k(attnum)
        JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = tbl AND CASE identity WHEN 'd' THEN i.indisprimary ELSE i.indisreplident END;
        IF index_columns IS NOT NULL AND index_columns <@ key_columns THEN
            RETURN NULL;
        END IF;
    END IF;
    RETURN format('mode ''logical'' needs the replica identity of %s to be its primary key (%s), and it is %s',
                  tbl, array_to_string(key_columns, ', '),
                  CASE identity WHEN 'f' THEN 'FULL' WHEN 'n' THEN 'NOTHING'
                                ELSE 'another index, or a primary key that is gone' END);
END
$$;

-- Adds `tbl` to mgte_changes (made on first use), or removes it; removing the last table
-- drops the slot too, since a slot nobody reads keeps WAL from being recycled. DDL only.
CREATE OR REPLACE FUNCTION mgte._publish(cfg mgte.enabled, publish boolean)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    member boolean := EXISTS (SELECT FROM pg_catalog.pg_publication_rel r
                              JOIN pg_catalog.pg_publication p ON p.oid = r.prpubid
                              WHERE p.pubname = 'mgte_changes' AND r.prrelid = cfg.tbl);
BEGIN
    IF publish AND NOT member THEN
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_publication WHERE pubname = 'mgte_changes') THEN
            CREATE PUBLICATION mgte_changes
                WITH (publish = 'insert, update, delete, truncate', publish_via_partition_root = true);
            COMMENT ON PUBLICATION mgte_changes IS 'the tables whose rows mgte embeds in logical mode (see mgte_enable)';
        END IF;
        EXECUTE format('ALTER PUBLICATION mgte_changes ADD TABLE %s (%s)', cfg.tbl, mgte._keys(cfg));
    ELSIF NOT publish AND member THEN
        EXECUTE format('ALTER PUBLICATION mgte_changes DROP TABLE %s', cfg.tbl);
    END IF;
    IF NOT publish AND NOT EXISTS (SELECT FROM mgte.enabled e WHERE e.mode = 'logical' AND e.tbl <> cfg.tbl) THEN
        -- A worker reading it right now keeps it; it drops the slot itself once it finds
        -- no table in logical mode.
        PERFORM pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots
        WHERE slot_name = mgte._logical_slot() AND NOT active;
    END IF;
END
$$;

-- Whether mgte_changes is as _publish makes it: every operation, published as the
-- partitioned root, the tables in logical mode with their key columns, and nothing else.
CREATE OR REPLACE FUNCTION mgte._publication_intact()
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH publication AS (
        SELECT p.oid FROM pg_catalog.pg_publication p
        WHERE p.pubname = 'mgte_changes' AND NOT p.puballtables AND p.pubinsert AND p.pubupdate AND p.pubdelete
          AND p.pubtruncate AND p.pubviaroot),
    published AS (
        SELECT r.prrelid AS tbl, ARRAY(SELECT a.attname FROM unnest(r.prattrs) AS k(attnum)
                                       JOIN pg_catalog.pg_attribute a ON a.attrelid = r.prrelid AND a.attnum = k.attnum
                                       ORDER BY a.attname) AS columns
        FROM pg_catalog.pg_publication_rel r JOIN publication ON r.prpubid = publication.oid),
    wanted AS (
        SELECT e.tbl::oid AS tbl, ARRAY(SELECT unnest(e.key_columns) ORDER BY 1) AS columns
        FROM mgte.enabled e WHERE e.mode = 'logical')
    SELECT EXISTS (SELECT FROM publication)
       AND NOT EXISTS (SELECT FROM pg_catalog.pg_publication_namespace n JOIN publication ON n.pnpubid = publication.oid)
       AND NOT EXISTS ((SELECT * FROM published EXCEPT SELECT * FROM wanted)
                       UNION ALL (SELECT * FROM wanted EXCEPT SELECT * FROM published))
$$;

-- For mgte worker: makes the slot if it is missing (or lost: max_slot_wal_keep_size let
-- PostgreSQL remove WAL it still needed); true when it did, and the worker then applies
-- every table in logical mode whole (keys NULL), for what was written before. Without a
-- table in logical mode, drops the slot instead and returns false. A publication changed or
-- dropped by hand would have the slot miss changes, or fail on every read (pgoutput looks
-- the publication up as of each change): it is made again and the slot dropped, and NULL
-- returned; the next call, in a transaction that has written nothing, makes the slot.
CREATE OR REPLACE FUNCTION mgte._logical_start()
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    slot name := mgte._logical_slot();
    wanted boolean;
    present boolean;
BEGIN
    -- Waits for a DROP EXTENSION under way (mgte._on_drop_extension), which then fails this
    -- call: a slot made meanwhile would outlive mgte.
    LOCK TABLE mgte.enabled IN ROW SHARE MODE;
    wanted := EXISTS (SELECT FROM mgte.enabled WHERE mode = 'logical');
    IF EXISTS (SELECT FROM pg_catalog.pg_replication_slots WHERE slot_name = slot AND wal_status = 'lost') THEN
        PERFORM pg_catalog.pg_drop_replication_slot(slot);
    END IF;
    present := EXISTS (SELECT FROM pg_catalog.pg_replication_slots WHERE slot_name = slot);
    IF wanted AND NOT mgte._publication_intact() THEN
        DROP PUBLICATION IF EXISTS mgte_changes;
        PERFORM mgte._publish(e, true) FROM mgte.enabled e WHERE e.mode = 'logical';
        IF present THEN
            PERFORM pg_catalog.pg_drop_replication_slot(slot);
        END IF;
        RETURN NULL;
    END IF;
    IF wanted AND NOT present THEN
        PERFORM pg_catalog.pg_create_logical_replication_slot(slot, 'pgoutput');
        RETURN true;
    END IF;
    IF present AND NOT wanted THEN
        PERFORM pg_catalog.pg_drop_replication_slot(slot);
    END IF;
    RETURN false;
END
$$;

-- For mgte worker: the changes of transactions that committed before `upto`, at most about
-- `max_changes` of them (whole transactions), as pgoutput messages.
CREATE OR REPLACE FUNCTION mgte._logical_peek(upto pg_lsn, max_changes integer)
RETURNS TABLE (lsn pg_lsn, data bytea)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.lsn, c.data
    FROM pg_catalog.pg_logical_slot_peek_binary_changes(mgte._logical_slot(), upto, max_changes,
        'proto_version', '1', 'publication_names', 'mgte_changes') AS c
$$;

-- For mgte worker: forgets the changes before `upto`, once they are applied.
CREATE OR REPLACE FUNCTION mgte._logical_advance(upto pg_lsn)
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT FROM pg_catalog.pg_replication_slot_advance(mgte._logical_slot(),
        greatest(upto, (SELECT confirmed_flush_lsn FROM pg_catalog.pg_replication_slots
                        WHERE slot_name = mgte._logical_slot())))
$$;

-- DROP EXTENSION mgte takes along what logical mode made outside the extension: the
-- publication, and the slot, which no worker would read again and which would keep WAL until
-- the disk fills. No event trigger of mgte fires once mgte is dropped, and one that fires
-- before cannot see what the command drops, so this one acts before every DROP EXTENSION or
-- DROP SCHEMA whose statement names mgte, run by a role that may drop the extension. Acting
-- on a DROP that then fails costs little: the publication comes back with the rollback, and
-- the worker makes a new slot and compares each table in logical mode whole.
-- Not SECURITY DEFINER: it acts with the rights of the one dropping the extension.
CREATE OR REPLACE FUNCTION mgte._on_drop_extension()
RETURNS event_trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    slot name;
    give_up timestamptz := clock_timestamp() + interval '10 seconds';
BEGIN
    -- Every DROP SCHEMA runs this, by any role: nothing of mgte is touched before the test.
    IF current_query() !~* '\mmgte\M'
       OR NOT pg_catalog.pg_has_role((SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'mgte'), 'USAGE') THEN
        RETURN;
    END IF;
    -- A worker making the slot holds this lock (mgte._logical_start), and one that asks for
    -- it from now on fails once mgte is gone.
    LOCK TABLE mgte.enabled IN EXCLUSIVE MODE;
    slot := mgte._logical_slot();
    DROP PUBLICATION IF EXISTS mgte_changes;
    WHILE EXISTS (SELECT FROM pg_catalog.pg_replication_slots WHERE slot_name = slot) LOOP
        BEGIN
            PERFORM pg_catalog.pg_drop_replication_slot(slot);
        EXCEPTION WHEN object_in_use THEN  -- a worker is reading it; it lets go within a pass
            IF clock_timestamp() > give_up THEN
                RAISE WARNING 'mgte: the logical decoding slot % is still being read, so it stays', slot
                    USING HINT = format('stop mgte worker, then drop it: SELECT pg_drop_replication_slot(%L)', slot);
                EXIT;
            END IF;
            PERFORM pg_catalog.pg_sleep(0.05);
        END;
    END LOOP;
END
$$;

DROP EVENT TRIGGER IF EXISTS mgte_drop_extension;
CREATE EVENT TRIGGER mgte_drop_extension ON ddl_command_start WHEN TAG IN ('DROP EXTENSION', 'DROP SCHEMA')
    EXECUTE FUNCTION mgte._on_drop_extension();

REVOKE ALL ON FUNCTION mgte._logical_start(), mgte._logical_peek(pg_lsn, integer), mgte._logical_advance(pg_lsn),
    mgte._publish(mgte.enabled, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mgte._logical_start(), mgte._logical_peek(pg_lsn, integer), mgte._logical_advance(pg_lsn)
    TO mgte_worker;
