-- Auto-embedding: mgte_enable sets a table up; statement-level triggers queue the keys of
-- changed rows (or, in sync mode, embed them inside the statement; in logical mode there is
-- none but a partition's TRUNCATE trigger, see sql/logical.sql); `mgte worker` drains the
-- queue through the table's _claim and _settle functions. A partitioned table's partitions
-- get the same triggers, and partitions that come and go by DDL are handled by the event
-- triggers at the end of this file.
--
-- Who runs what. For each enabled table, schema mgte holds objects that belong to the
-- table's OWNER, and every function among them is SECURITY DEFINER, so it runs with the
-- owner's rights and nobody else's:
--   <prefix>_embeddings  the stored outputs, which model made them, md5 of the text embedded
--   <prefix>_queue       keys waiting to be embedded, with the lease of the worker holding them
--   <prefix>_failed      dead letters: texts the server rejected, or that failed alone repeatedly
--   <prefix>_on_change   the trigger function           (runs on every write of the table)
--   <prefix>_claim       leases a batch to a worker     (EXECUTE: owner, mgte_worker)
--   <prefix>_settle      stores or releases the batch   (EXECUTE: owner, mgte_worker)
--   <prefix>_requeue     queues all rows, or the dead letters   (EXECUTE: owner)
--   <prefix>_status      counts for mgte_status         (EXECUTE: owner, mgte_worker)
--   <prefix>_changed     logical mode's trigger: queues changed keys (EXECUTE: owner, mgte_worker)
-- While a table is re-embedded with another model (mgte_reembed) it has a second such set,
-- whose triggers keep it current, until it takes over.
-- The extension's own SECURITY DEFINER functions (_provision, _unprovision, _create_indexes,
-- _start_reembed, _finish_reembed, _adopt_model, the event triggers) touch mgte's catalog
-- and run DDL only: they never write a row of the per-table tables nor compare a key, so no
-- domain CHECK, operator, cast, default, policy or trigger that the owner controls ever runs
-- with the installer's rights. They act only on a proof that the acting role owns the table
-- (mgte._authorize).
--
-- The queue protocol (why each row ends with the embedding of its final text):
--   1. A write queues the key (upsert: a new text resets attempts and error; it leaves a
--      lease alone). Deleting a row, moving it to another key or setting its text to NULL
--      removes its queue entry first, then its embedding and dead letter.
--   2. _claim leases unleased (or expired) entries with a fresh lease id and returns each
--      key's text and md5 as it reads it.
--   3. The worker embeds the texts with no transaction open, then calls _settle, which
--      first locks the entries it still holds the lease on (FOR UPDATE), and then, in its
--      next statement and so with a newer snapshot, compares md5 of the text the row holds
--      NOW with the md5 embedded. Equal: the result is stored (or dead-lettered) and the
--      entry deleted. Different, or the row gone: the entry is released for the next claim
--      at once. A write whose trigger reached the entry before the lock makes the lock wait
--      for its commit, so the comparison sees its text; one that reaches it after the lock
--      waits for the settle to commit, and queues the key again (or deletes what it stored).
--   4. A lease is never shorter than the time the worker may wait for the server, and a
--      stale lease (another worker took the entry over) stores nothing.

-- The key columns of an enabled table, as a column list, optionally qualified.
CREATE OR REPLACE FUNCTION mgte._keys(cfg mgte.enabled, qualifier text DEFAULT NULL)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(CASE WHEN qualifier IS NULL THEN '' ELSE quote_ident(qualifier) || '.' END
                      || quote_ident(k), ', ' ORDER BY n)
    FROM unnest(cfg.key_columns) WITH ORDINALITY AS u(k, n)
$$;

-- "a.k1 = b.k1 AND a.k2 = b.k2" for the key columns.
CREATE OR REPLACE FUNCTION mgte._keys_match(cfg mgte.enabled, a text, b text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(format('%I.%I = %I.%I', a, k, b, k), ' AND ')
    FROM unnest(cfg.key_columns) AS u(k)
$$;

-- The key columns with their types, for column definitions and jsonb_to_recordset.
CREATE OR REPLACE FUNCTION mgte._key_definitions(cfg mgte.enabled)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(format('%I %s', a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)), ', '
                      ORDER BY u.n)
    FROM unnest(cfg.key_columns) WITH ORDINALITY AS u(k, n)
    JOIN pg_catalog.pg_attribute a ON a.attrelid = cfg.tbl AND a.attname = u.k
$$;

-- jsonb_build_object(...) of the key columns, qualified: how a row's key travels as jsonb.
CREATE OR REPLACE FUNCTION mgte._key_object(cfg mgte.enabled, qualifier text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format('jsonb_build_object(%s)', string_agg(format('%L, %I.%I', k, qualifier, k), ', ' ORDER BY n))
    FROM unnest(cfg.key_columns) WITH ORDINALITY AS u(k, n)
$$;

-- The schema pgvector lives in, quoted: its types, operators and operator classes are
-- named through it, since every mgte function pins search_path.
CREATE OR REPLACE FUNCTION mgte._vector_schema()
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT extnamespace::regnamespace::text FROM pg_catalog.pg_extension WHERE extname = 'vector'
$$;

-- A pgvector type with its dimensions, e.g. public.vector(768).
CREATE OR REPLACE FUNCTION mgte._vector_type(name text, dimensions integer)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format('%s.%I(%s)', mgte._vector_schema(), name, dimensions)
$$;

-- The longest start of `name` that fits in `bytes` bytes without cutting a character:
-- PostgreSQL cuts identifiers at 63 bytes, so names built from a table's name are clipped
-- first and their suffixes survive.
CREATE OR REPLACE FUNCTION mgte._clip(name text, bytes integer)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT left(name, max(n)) FROM generate_series(0, length(name)) AS n WHERE octet_length(left(name, n)) <= bytes
$$;

-- Fills a template of generated SQL in one pass (so a value is never filled again):
--   {name}          vars ->> name, as given (already quoted)
--   {keys}, {keys.x}  the key columns, unqualified or qualified by alias x
--   {x=y}           the key columns of aliases x and y are equal
--   {key_object.x}  the key of alias x as a jsonb object
CREATE OR REPLACE FUNCTION mgte._render(cfg mgte.enabled, template text, vars jsonb)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    out text := '';
    m text[];
BEGIN
    LOOP
        m := regexp_match(template, '^(.*?)\{([a-z_]+)(?:([.=])([a-z]+))?\}(.*)$', 's');
        EXIT WHEN m IS NULL;
        out := out || m[1] || CASE
            WHEN m[3] = '=' THEN mgte._keys_match(cfg, m[2], m[4])
            WHEN m[2] = 'keys' THEN mgte._keys(cfg, m[4])
            WHEN m[2] = 'key_object' AND m[3] = '.' THEN mgte._key_object(cfg, m[4])
            WHEN m[3] IS NULL AND vars ? m[2] THEN vars ->> m[2]
        END;
        IF out IS NULL THEN
            RAISE EXCEPTION 'mgte: template placeholder {%} has no value', concat(m[2], m[3], m[4]);
        END IF;
        template := m[5];
    END LOOP;
    RETURN out || template;
END
$$;

CREATE OR REPLACE FUNCTION mgte._config(tbl regclass)
RETURNS mgte.enabled
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg mgte.enabled;
BEGIN
    SELECT * INTO cfg FROM mgte.enabled e WHERE e.tbl = _config.tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % has no auto-embedding', tbl
            USING ERRCODE = 'undefined_object', HINT = 'set it up with mgte_enable(table, text_column)';
    END IF;
    RETURN cfg;
END
$$;

-- A per-table function of an enabled table, e.g. mgte."docs_claim", or with its argument
-- types, e.g. mgte."docs_claim"(integer, double precision).
CREATE OR REPLACE FUNCTION mgte._function(cfg mgte.enabled, suffix text, signature boolean DEFAULT false)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format('mgte.%I', cfg.prefix || '_' || suffix) || CASE WHEN signature THEN CASE suffix
        WHEN 'claim' THEN '(integer, double precision)'
        WHEN 'settle' THEN format('(jsonb, %1$s.vector[], %1$s.sparsevec[])', mgte._vector_schema())
        WHEN 'requeue' THEN '(boolean)' WHEN 'changed' THEN '(jsonb)' ELSE '()' END ELSE '' END
$$;

CREATE OR REPLACE FUNCTION mgte._function_names()
RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ARRAY['on_change', 'claim', 'settle', 'requeue', 'status', 'changed']
$$;

-- The events of a set's statement-level triggers, which are named after them.
CREATE OR REPLACE FUNCTION mgte._trigger_events()
RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ARRAY['insert', 'update', 'delete', 'truncate']
$$;

-- The role that owns a table, as a name.
CREATE OR REPLACE FUNCTION mgte._owner(tbl regclass)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.pg_get_userbyid(relowner) FROM pg_catalog.pg_class WHERE oid = tbl
$$;

-- --- Ownership -------------------------------------------------------------------------

-- Runs as the caller: only the table's owner (or a member of the owning role, as for ALTER
-- TABLE) gets past _check_owner, and _authorize leaves the proof that mgte's SECURITY
-- DEFINER functions consume (see mgte.authorizations).
CREATE OR REPLACE FUNCTION mgte._check_owner(tbl regclass)
RETURNS void
LANGUAGE plpgsql STABLE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT pg_catalog.pg_has_role(current_user,
                                  (SELECT relowner FROM pg_catalog.pg_class WHERE oid = tbl), 'USAGE') THEN
        RAISE EXCEPTION 'must be the owner of table %', tbl
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'only the table''s owner (or a member of the owning role) can change its auto-embedding';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION mgte._authorize(tbl regclass)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM mgte._check_owner(tbl);
    INSERT INTO mgte.authorizations (tbl) VALUES (tbl);
END
$$;

-- In a SECURITY DEFINER function: fails unless this transaction of this backend proved it
-- owns `tbl` (mgte._authorize).
CREATE OR REPLACE FUNCTION mgte._consume_authorization(tbl regclass)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    proofs bigint;
BEGIN
    -- Proofs left by earlier transactions of this backend are void.
    DELETE FROM mgte.authorizations a
    WHERE a.backend = pg_catalog.pg_backend_pid() AND a.xact_start <> pg_catalog.transaction_timestamp();
    DELETE FROM mgte.authorizations a
    WHERE a.backend = pg_catalog.pg_backend_pid() AND a.xact_start = pg_catalog.transaction_timestamp()
      AND a.tbl = _consume_authorization.tbl;
    GET DIAGNOSTICS proofs = ROW_COUNT;
    IF proofs = 0 THEN
        RAISE EXCEPTION 'must be the owner of table %', tbl USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;

-- --- Setting a table up ------------------------------------------------------------------

-- A prefix for a table's objects that no other table's objects use, and that keeps every
-- suffix after PostgreSQL's 63-byte cut: the table's name, or with its oid when that name
-- is taken or had to be clipped.
CREATE OR REPLACE FUNCTION mgte._free_prefix(tbl regclass)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    relname text := (SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = tbl);
    candidate text;
    attempt integer := 0;
BEGIN
    LOOP
        -- 63 bytes less the longest suffix ("_embeddings", 11) and "_<oid>_<n>" (at most 14).
        candidate := CASE WHEN attempt = 0 AND octet_length(relname) <= 38 THEN relname
                          ELSE mgte._clip(relname, 38) || '_' || tbl::oid
                               || CASE WHEN attempt > 1 THEN '_' || attempt ELSE '' END END;
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_class c
                       WHERE c.relnamespace = 'mgte'::regnamespace AND c.relname LIKE candidate || '\_%')
           AND NOT EXISTS (SELECT FROM pg_catalog.pg_proc p
                           WHERE p.pronamespace = 'mgte'::regnamespace AND p.proname LIKE candidate || '\_%')
           AND NOT EXISTS (SELECT FROM mgte.enabled e WHERE e.prefix = candidate) THEN
            RETURN candidate;
        END IF;
        attempt := attempt + 1;
    END LOOP;
END
$$;

-- A set of per-table objects: the tables, functions and triggers named by cfg.prefix, owned
-- by the table's owner. A table has one set, and a second while it is re-embedded with
-- another model (mgte_reembed), whose triggers are named mgte_next_* until it takes over.
-- DDL only: see the top of this file.
CREATE OR REPLACE FUNCTION mgte._create_set(cfg mgte.enabled, triggers text)
RETURNS mgte.enabled
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key_defs text := mgte._key_definitions(cfg);
BEGIN
    EXECUTE format(
        'CREATE TABLE mgte.%I (%s, embedding %s NOT NULL, sparse jsonb, sparsevec %s, model text NOT NULL, '
        'text_md5 text NOT NULL, tokens integer NOT NULL, truncated boolean NOT NULL, '
        'embedded_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (%s))',
        cfg.prefix || '_embeddings', key_defs, mgte._vector_type('vector', cfg.dim),
        mgte._vector_type('sparsevec', cfg.vocab_size), mgte._keys(cfg));
    EXECUTE format('CREATE INDEX ON mgte.%I (embedded_at)', cfg.prefix || '_embeddings');
    EXECUTE format(
        'CREATE TABLE mgte.%I (%s, enqueued_at timestamptz NOT NULL DEFAULT now(), '
        'attempts integer NOT NULL DEFAULT 0, lease uuid, leased_until timestamptz, last_error text, '
        'PRIMARY KEY (%s))',
        cfg.prefix || '_queue', key_defs, mgte._keys(cfg));
    EXECUTE format(
        'CREATE TABLE mgte.%I (%s, text_md5 text, attempts integer NOT NULL, error text NOT NULL, '
        'failed_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (%s))',
        cfg.prefix || '_failed', key_defs, mgte._keys(cfg));
    cfg.embeddings := format('mgte.%I', cfg.prefix || '_embeddings')::regclass;
    cfg.queue := format('mgte.%I', cfg.prefix || '_queue')::regclass;
    cfg.failed := format('mgte.%I', cfg.prefix || '_failed')::regclass;
    EXECUTE format('COMMENT ON TABLE %s IS %L', cfg.embeddings,
                   format('mgte embeddings of %s.%I by %s (see mgte_enable)', cfg.tbl, cfg.text_column,
                          coalesce(cfg.model, 'the first model that stores')));
    EXECUTE format('COMMENT ON TABLE %s IS %L', cfg.queue, format('rows of %s waiting for mgte worker', cfg.tbl));
    EXECUTE format('COMMENT ON TABLE %s IS %L', cfg.failed,
                   format('rows of %s the mgte server rejected; mgte_retry_failed(%L) queues them again',
                          cfg.tbl, cfg.tbl::text));

    PERFORM mgte._create_functions(cfg);
    PERFORM mgte._give_set(cfg, mgte._owner(cfg.tbl));
    PERFORM mgte._create_triggers(cfg, triggers);
    RETURN cfg;
END
$$;

-- A set's functions, from the templates below. Made again (as they are, under the same
-- owner and grants) when the table is renamed or moved to another schema, since they name it.
CREATE OR REPLACE FUNCTION mgte._create_functions(cfg mgte.enabled)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key_defs text := mgte._key_definitions(cfg);
    vars jsonb;
    fn text;
BEGIN
    vars := jsonb_build_object(
        'tbl', cfg.tbl::text, 'tbl_literal', quote_literal(cfg.tbl::text), 'text', quote_ident(cfg.text_column),
        'prefix_literal', quote_literal(cfg.prefix),
        -- A key queued again has a new text: it deserves new tries.
        'requeue_on_conflict', format('ON CONFLICT (%s) DO UPDATE SET enqueued_at = now(), attempts = 0, '
                                      'last_error = NULL', mgte._keys(cfg)),
        'embeddings', cfg.embeddings::text, 'queue', cfg.queue::text, 'failed', cfg.failed::text,
        'key_defs', key_defs, 'vector', mgte._vector_type('vector', cfg.dim),
        'sparsevec', mgte._vector_type('sparsevec', cfg.vocab_size));
    vars := vars || jsonb_build_object(
        'enqueue_inserted', mgte._render(cfg, mgte._enqueue_template(
            format('SELECT %s, n.%I::text AS mgte_text FROM mgte_new AS n WHERE n.%I IS NOT NULL',
                   mgte._keys(cfg, 'n'), cfg.text_column, cfg.text_column), true), vars),
        'enqueue_updated', mgte._render(cfg, mgte._enqueue_template(
            format('SELECT %s, n.%I::text AS mgte_text FROM mgte_new AS n WHERE n.%I IS NOT NULL '
                   'AND NOT EXISTS (SELECT FROM mgte_old AS o WHERE %s AND o.%I::text IS NOT DISTINCT FROM n.%I::text)',
                   mgte._keys(cfg, 'n'), cfg.text_column, cfg.text_column, mgte._keys_match(cfg, 'o', 'n'),
                   cfg.text_column, cfg.text_column), false), vars),
        'changed_given', mgte._render(cfg, mgte._changed_template(
            'SELECT {keys} FROM jsonb_to_recordset(changed_keys) AS c({key_defs})'), vars),
        'changed_all', mgte._render(cfg, mgte._changed_template(
            'SELECT {keys} FROM {tbl} UNION SELECT {keys} FROM {embeddings} '
            'UNION SELECT {keys} FROM {failed} UNION SELECT {keys} FROM {queue}'), vars));
    FOR fn IN SELECT unnest(mgte._function_names()) LOOP
        EXECUTE mgte._render(cfg, mgte._function_template(fn), vars || jsonb_build_object('name', mgte._function(cfg, fn)));
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', mgte._function(cfg, fn, true));
    END LOOP;
    EXECUTE format('GRANT EXECUTE ON FUNCTION %s, %s, %s, %s TO mgte_worker', mgte._function(cfg, 'claim', true),
                   mgte._function(cfg, 'settle', true), mgte._function(cfg, 'status', true),
                   mgte._function(cfg, 'changed', true));
END
$$;

-- The relations whose statement-level triggers a set needs: the table and, when it is
-- partitioned, every partition below it, since PostgreSQL fires a statement's triggers on the
-- relation it names only (a write to a partition itself fires none of the table's).
CREATE OR REPLACE FUNCTION mgte._trigger_relations(tbl regclass)
RETURNS SETOF regclass
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT tbl UNION SELECT p.relid FROM pg_catalog.pg_partition_tree(tbl) AS p
$$;

-- What mgte cannot follow, refused with what to do instead. Statement-level triggers see the
-- writes of the statements that name their table, and only those: a partitioned table's
-- partitions get its triggers, but a table that is a partition (written through its
-- partitioned table) or in an inheritance tree (a parent's UPDATE and DELETE reach its
-- children, whose rows its reads include) would lose writes. The set's functions read the
-- table as its owner, from whom FORCE ROW LEVEL SECURITY would hide rows, which would then
-- count as deleted.
CREATE OR REPLACE FUNCTION mgte._check_followable(tbl regclass)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    root regclass := pg_catalog.pg_partition_root(tbl);
    relative text;
BEGIN
    IF root IS NOT NULL AND root <> tbl THEN
        RAISE EXCEPTION '% is a partition of %, and writes through % would not fire its triggers', tbl, root, root
            USING ERRCODE = 'wrong_object_type',
                  HINT = format('enable %s instead, whose partitions follow (a partition already enabled: '
                                'SELECT mgte_disable(%L) first)', root, tbl::text);
    END IF;
    SELECT CASE WHEN i.inhrelid = tbl THEN format('its parent %s', i.inhparent::regclass)
                ELSE format('its child %s', i.inhrelid::regclass) END INTO relative
    FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = tbl
    WHERE (i.inhrelid = tbl OR i.inhparent = tbl) AND c.relkind = 'r' AND NOT c.relispartition
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '% is in a table inheritance tree (with %), whose writes its triggers do not all see',
            tbl, relative
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'mgte follows declarative partitioning (PARTITION BY), not table inheritance (INHERITS)';
    END IF;
    IF (SELECT c.relforcerowsecurity FROM pg_catalog.pg_class c WHERE c.oid = tbl) THEN
        RAISE EXCEPTION '% has FORCE ROW LEVEL SECURITY, whose policies would hide rows from the owner''s role, '
                        'as which mgte reads the table', tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY (the policies still bind every other role)',
                                tbl);
    END IF;
END
$$;

-- A set's statement-level triggers on the table and its partitions, named triggers || event.
-- In logical mode the slot carries every write but a partition's own TRUNCATE, which
-- pgoutput does not send for a table published as its partitioned root: partitions keep
-- that one trigger.
CREATE OR REPLACE FUNCTION mgte._create_triggers(cfg mgte.enabled, triggers text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel regclass;
BEGIN
    FOR rel IN SELECT mgte._trigger_relations(cfg.tbl) LOOP
        PERFORM mgte._create_triggers_on(cfg, rel, triggers);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION mgte._create_triggers_on(cfg mgte.enabled, rel regclass, triggers text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    fn text;
BEGIN
    IF rel <> cfg.tbl THEN
        INSERT INTO mgte.partitions (partition, tbl) VALUES (rel, cfg.tbl) ON CONFLICT DO NOTHING;
    END IF;
    FOR fn IN SELECT unnest(mgte._trigger_events()) LOOP
        CONTINUE WHEN cfg.mode = 'logical' AND NOT (fn = 'truncate' AND rel <> cfg.tbl);
        EXECUTE format('CREATE TRIGGER %I AFTER %s ON %s %s FOR EACH STATEMENT EXECUTE FUNCTION %s()',
                       triggers || fn, upper(fn), rel,
                       CASE fn WHEN 'insert' THEN 'REFERENCING NEW TABLE AS mgte_new'
                               WHEN 'update' THEN 'REFERENCING OLD TABLE AS mgte_old NEW TABLE AS mgte_new'
                               WHEN 'delete' THEN 'REFERENCING OLD TABLE AS mgte_old'
                               ELSE '' END,
                       mgte._function(cfg, 'on_change'));
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION mgte._drop_triggers(tbl regclass, triggers text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel regclass;
BEGIN
    FOR rel IN SELECT mgte._trigger_relations(tbl) LOOP
        PERFORM mgte._drop_triggers_on(rel, triggers);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION mgte._drop_triggers_on(rel regclass, triggers text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    fn text;
BEGIN
    FOR fn IN SELECT unnest(mgte._trigger_events()) LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', triggers || fn, rel);
    END LOOP;
END
$$;

-- Makes a table's triggers (both sets' while it is re-embedded) what its mode wants, and puts
-- it into the publication or takes it out: on a switch into or out of logical mode, and for
-- mgte_resync. The table lock the trigger DDL takes keeps every write on one side of a switch.
-- DDL only: mgte_enable applies the table whole after leaving logical mode, for what the
-- slot had not yet handed on.
CREATE OR REPLACE FUNCTION mgte._switch_capture(cfg mgte.enabled)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    upcoming mgte.enabled := mgte._next_set(cfg.tbl);
BEGIN
    PERFORM mgte._drop_triggers(cfg.tbl, 'mgte_');
    PERFORM mgte._drop_triggers(cfg.tbl, 'mgte_next_');
    PERFORM mgte._create_triggers(cfg, 'mgte_');
    IF upcoming.prefix IS NOT NULL THEN
        PERFORM mgte._create_triggers(upcoming, 'mgte_next_');
    END IF;
    PERFORM mgte._publish(cfg, cfg.mode = 'logical');
END
$$;

-- Makes `owner` the owner of a set's tables and functions (their grants go along). The queue
-- first: each statement fires _on_alter, which compares the table's owner with the queue's
-- and must find nothing left to do.
CREATE OR REPLACE FUNCTION mgte._give_set(cfg mgte.enabled, owner text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    fn text;
BEGIN
    EXECUTE format('ALTER TABLE %s OWNER TO %I', cfg.queue, owner);
    EXECUTE format('ALTER TABLE %s OWNER TO %I', cfg.embeddings, owner);
    EXECUTE format('ALTER TABLE %s OWNER TO %I', cfg.failed, owner);
    FOR fn IN SELECT unnest(mgte._function_names()) LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO %I', mgte._function(cfg, fn, true), owner);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION mgte._drop_set(cfg mgte.enabled, triggers text, keep_embeddings boolean)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    fn text;
BEGIN
    IF to_regclass(cfg.tbl::oid::regclass::text) IS NOT NULL THEN  -- not when the table itself is dropped
        PERFORM mgte._drop_triggers(cfg.tbl, triggers);
    END IF;
    EXECUTE format('DROP TABLE IF EXISTS %s, %s', cfg.queue, cfg.failed);
    IF NOT keep_embeddings THEN
        EXECUTE format('DROP TABLE IF EXISTS %s', cfg.embeddings);
    END IF;
    FOR fn IN SELECT unnest(mgte._function_names()) LOOP
        EXECUTE format('DROP FUNCTION IF EXISTS %s', mgte._function(cfg, fn, true));
    END LOOP;
END
$$;

-- The set being filled while a table is re-embedded, as a configuration of its own.
CREATE OR REPLACE FUNCTION mgte._next_set(tbl regclass)
RETURNS mgte.enabled
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT (e.tbl, e.text_column, e.key_columns, r.embeddings, r.queue, r.failed, e.search_view, e.dim,
            e.vocab_size, e.sparse, e.mode, e.on_failure, e.sync_timeout_ms, r.started_at, r.prefix,
            r.model)::mgte.enabled
    FROM mgte.enabled e JOIN mgte.reembeddings r USING (tbl)
    WHERE e.tbl = _next_set.tbl
$$;

-- Every set of objects: each enabled table's, and the second one of a table being re-embedded,
-- with the prefix of its triggers' names.
CREATE OR REPLACE FUNCTION mgte._sets()
RETURNS TABLE (cfg mgte.enabled, triggers text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT e, 'mgte_' FROM mgte.enabled e
    UNION ALL SELECT mgte._next_set(r.tbl), 'mgte_next_' FROM mgte.reembeddings r
$$;

-- Sets a new table up (everything but its rows, which mgte_enable queues as the owner), or
-- changes the mode of one that is set up.
CREATE OR REPLACE FUNCTION mgte._provision(cfg mgte.enabled)
RETURNS mgte.enabled
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    existing mgte.enabled;
BEGIN
    PERFORM mgte._consume_authorization(cfg.tbl);
    SELECT * INTO existing FROM mgte.enabled e WHERE e.tbl = cfg.tbl;
    IF FOUND THEN
        UPDATE mgte.enabled e
        SET mode = cfg.mode, on_failure = cfg.on_failure, sync_timeout_ms = cfg.sync_timeout_ms
        WHERE e.tbl = cfg.tbl;
        IF (existing.mode = 'logical') <> (cfg.mode = 'logical') THEN
            PERFORM mgte._switch_capture(mgte._config(cfg.tbl));
        END IF;
        RETURN mgte._config(cfg.tbl);
    END IF;
    cfg.prefix := mgte._free_prefix(cfg.tbl);
    cfg := mgte._create_set(cfg, 'mgte_');
    INSERT INTO mgte.enabled SELECT cfg.*;
    IF cfg.mode = 'logical' THEN
        PERFORM mgte._publish(cfg, true);
    END IF;
    PERFORM mgte._create_search_view(cfg, mgte._owner(cfg.tbl));
    RETURN (SELECT e FROM mgte.enabled e WHERE e.tbl = cfg.tbl);
END
$$;

-- Drops a table's triggers and per-table objects (the embeddings unless keep_embeddings)
-- and forgets its configuration. DDL only.
CREATE OR REPLACE FUNCTION mgte._unprovision(tbl regclass, keep_embeddings boolean)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM mgte._consume_authorization(tbl);
    PERFORM mgte._drop_objects(mgte._config(tbl), keep_embeddings);
END
$$;

CREATE OR REPLACE FUNCTION mgte._drop_objects(cfg mgte.enabled, keep_embeddings boolean)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    upcoming mgte.enabled := mgte._next_set(cfg.tbl);
BEGIN
    IF cfg.search_view IS NOT NULL THEN
        EXECUTE format('DROP VIEW IF EXISTS %s', cfg.search_view);
    END IF;
    IF upcoming.prefix IS NOT NULL THEN
        PERFORM mgte._drop_set(upcoming, 'mgte_next_', false);
    END IF;
    PERFORM mgte._drop_set(cfg, 'mgte_', keep_embeddings);
    PERFORM mgte._publish(cfg, false);  -- drops the slot after the last table in logical mode
    DELETE FROM mgte.partitions p WHERE p.tbl::oid = cfg.tbl::oid;
    DELETE FROM mgte.reembeddings r WHERE r.tbl::oid = cfg.tbl::oid;
    DELETE FROM mgte.enabled e WHERE e.tbl::oid = cfg.tbl::oid;
END
$$;

-- Starts re-embedding a table with `model`: a second set of objects that its own triggers
-- keep current, filled by workers of a server that serves `model`.
CREATE OR REPLACE FUNCTION mgte._start_reembed(tbl regclass, model text)
RETURNS mgte.enabled
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    upcoming mgte.enabled := mgte._config(tbl);
BEGIN
    PERFORM mgte._consume_authorization(tbl);
    upcoming.prefix := mgte._free_prefix(tbl);
    upcoming.model := model;
    upcoming := mgte._create_set(upcoming, 'mgte_next_');
    INSERT INTO mgte.reembeddings (tbl, prefix, model, embeddings, queue, failed)
    VALUES (tbl, upcoming.prefix, model, upcoming.embeddings, upcoming.queue, upcoming.failed);
    PERFORM mgte._create_index_on(upcoming);
    RETURN upcoming;
END
$$;

-- Once the new set's queue is empty: it becomes the table's set, in one transaction, and
-- the old one is dropped. Searches read mgte.enabled, so they switch with it.
CREATE OR REPLACE FUNCTION mgte._finish_reembed(tbl regclass)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    live mgte.enabled := mgte._config(tbl);
    upcoming mgte.enabled := mgte._next_set(tbl);
    waiting boolean;
BEGIN
    PERFORM mgte._consume_authorization(tbl);
    IF upcoming.prefix IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT FROM %s)', upcoming.queue) INTO waiting;
    IF waiting THEN
        RETURN false;
    END IF;
    PERFORM mgte._drop_set(live, 'mgte_', false);
    PERFORM mgte._drop_triggers(tbl, 'mgte_next_');
    PERFORM mgte._create_triggers(upcoming, 'mgte_');
    DELETE FROM mgte.reembeddings r WHERE r.tbl = _finish_reembed.tbl;
    UPDATE mgte.enabled e
    SET prefix = upcoming.prefix, embeddings = upcoming.embeddings, queue = upcoming.queue, failed = upcoming.failed,
        model = upcoming.model
    WHERE e.tbl = _finish_reembed.tbl;
    RETURN true;
END
$$;

-- Adopts the model of the stored vectors as the table's model, when it had none (the
-- server was not reachable when the table was enabled). Reads mgte's catalog and one text
-- column of the embeddings only; any role may call it, since it only records what the
-- table's owner's functions stored.
CREATE OR REPLACE FUNCTION mgte._adopt_model(tbl regclass)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg mgte.enabled := mgte._config(tbl);
    stored text;
BEGIN
    IF cfg.model IS NULL THEN
        EXECUTE format('SELECT model FROM %s LIMIT 1', cfg.embeddings) INTO stored;
        UPDATE mgte.enabled e SET model = stored WHERE e.tbl = cfg.tbl AND e.model IS NULL;
    END IF;
END
$$;

-- --- The per-table functions --------------------------------------------------------------

-- The templates of the per-table functions (see _render). All are SECURITY DEFINER and
-- end up owned by the table's owner.
CREATE OR REPLACE FUNCTION mgte._function_template(fn text)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $template$
SELECT CASE fn
WHEN 'on_change' THEN $sql$
CREATE OR REPLACE FUNCTION {name}() RETURNS trigger
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $body$
DECLARE
    cfg mgte.enabled;
    queued bigint;
BEGIN
    SELECT * INTO cfg FROM mgte.enabled WHERE tbl = TG_RELID::regclass;
    IF NOT FOUND THEN  -- a partition of the table
        SELECT * INTO cfg FROM mgte.enabled WHERE tbl IN (SELECT relid FROM pg_catalog.pg_partition_ancestors(TG_RELID));
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
    END IF;
    IF TG_OP = 'TRUNCATE' THEN
        -- The whole table, when this is its own TRUNCATE (which fires its partitions' triggers
        -- too), or when it is empty while no write can reach it (its ACCESS EXCLUSIVE lock is
        -- ours). A partition's rows alone leave no keys behind: the table is compared whole.
        IF TG_RELID = cfg.tbl::oid OR (
            EXISTS (SELECT FROM pg_catalog.pg_locks WHERE locktype = 'relation' AND relation = cfg.tbl::oid
                    AND pid = pg_catalog.pg_backend_pid() AND mode = 'AccessExclusiveLock' AND granted)
            AND NOT EXISTS (SELECT FROM {tbl})) THEN
            TRUNCATE {queue}, {embeddings}, {failed};
            RETURN NULL;
        END IF;
        {changed_all}
        IF queued > 0 THEN
            PERFORM pg_catalog.pg_notify('mgte', cfg.tbl::text);
        END IF;
        RETURN NULL;
    END IF;

    -- The queue entries this statement may touch, locked first and in key order, as _settle
    -- locks them: a worker storing one of these keys finishes first (and what it stored is
    -- seen below), and the two never deadlock.
    IF TG_OP = 'DELETE' THEN
        PERFORM FROM {queue} AS q WHERE ({keys.q}) IN (SELECT {keys} FROM mgte_old)
        ORDER BY {keys.q} FOR UPDATE OF q;
    ELSIF TG_OP = 'UPDATE' THEN
        PERFORM FROM {queue} AS q WHERE ({keys.q}) IN (SELECT {keys} FROM mgte_old UNION SELECT {keys} FROM mgte_new)
        ORDER BY {keys.q} FOR UPDATE OF q;
    END IF;

    -- Keys gone: deleted, moved to another key, or whose text became NULL. The queue entry
    -- first, then, in later statements that see what a worker stored meanwhile, the
    -- embedding and the dead letter.
    IF TG_OP = 'DELETE' THEN
        DELETE FROM {queue} AS q USING mgte_old AS o WHERE {q=o};
        DELETE FROM {embeddings} AS e USING mgte_old AS o WHERE {e=o};
        DELETE FROM {failed} AS f USING mgte_old AS o WHERE {f=o};
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        DELETE FROM {queue} AS q USING mgte_old AS o
        WHERE {q=o} AND NOT EXISTS (SELECT FROM mgte_new AS n WHERE {n=o} AND n.{text} IS NOT NULL);
        DELETE FROM {embeddings} AS e USING mgte_old AS o
        WHERE {e=o} AND NOT EXISTS (SELECT FROM mgte_new AS n WHERE {n=o} AND n.{text} IS NOT NULL);
        DELETE FROM {failed} AS f USING mgte_old AS o
        WHERE {f=o} AND NOT EXISTS (SELECT FROM mgte_new AS n WHERE {n=o} AND n.{text} IS NOT NULL);
        -- A new text deserves new tries.
        DELETE FROM {failed} AS f USING mgte_new AS n
        WHERE {f=n} AND NOT EXISTS (SELECT FROM mgte_old AS o WHERE {o=n} AND o.{text}::text IS NOT DISTINCT FROM n.{text}::text);
        {enqueue_updated}
    ELSE
        {enqueue_inserted}
    END IF;
    IF queued > 0 THEN
        PERFORM pg_catalog.pg_notify('mgte', cfg.tbl::text);
    END IF;
    RETURN NULL;
END
$body$
$sql$
WHEN 'claim' THEN $sql$
CREATE OR REPLACE FUNCTION {name}(batch_size integer, lease_seconds double precision)
RETURNS TABLE (key jsonb, lease uuid, attempts integer, body text, body_md5 text)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $body$
    -- Entries whose row is gone or whose text is NULL are dropped on the way.
    WITH picked AS (
        SELECT {keys.q}, t.{text}::text AS mgte_body
        FROM {queue} AS q LEFT JOIN {tbl} AS t ON {t=q}
        WHERE q.leased_until IS NULL OR q.leased_until < now()
        LIMIT batch_size FOR UPDATE OF q SKIP LOCKED),
    leased AS (
        UPDATE {queue} AS q SET lease = gen_random_uuid(), leased_until = now() + lease_seconds * interval '1 second'
        FROM picked AS p WHERE {q=p} AND p.mgte_body IS NOT NULL
        RETURNING {keys.q}, q.lease, q.attempts, p.mgte_body),
    orphans AS (DELETE FROM {queue} AS q USING picked AS p WHERE {q=p} AND p.mgte_body IS NULL)
    SELECT {key_object.l}, l.lease, l.attempts, l.mgte_body, md5(l.mgte_body) FROM leased AS l
$body$
$sql$
WHEN 'settle' THEN $sql$
CREATE OR REPLACE FUNCTION {name}(results jsonb, embeddings {vector}[], sparsevecs {sparsevec}[])
RETURNS TABLE (stored bigint, failed bigint, released bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $body$
DECLARE
    -- The model of this set of objects: the table's, or the one it is re-embedded with.
    table_model text := coalesce((SELECT model FROM mgte.reembeddings WHERE prefix = {prefix_literal}),
                                 (SELECT model FROM mgte.enabled WHERE prefix = {prefix_literal}));
    served text;
BEGIN
    -- results: one object per claimed row: its key columns, mgte_lease, mgte_text_md5 and
    -- mgte_outcome: 'stored' (with the mgte_* fields of the embedding), 'failed' (dead
    -- letter, mgte_error), 'retry' (failed alone: give back, count an attempt, mgte_error)
    -- or 'released' (not tried, e.g. the server is down: give back, mgte_error). The vectors
    -- of a stored row travel apart, in pgvector's binary form: embeddings[mgte_item] and
    -- sparsevecs[mgte_item].
    SELECT r.mgte_model INTO served
    FROM jsonb_to_recordset(results) AS r(mgte_outcome text, mgte_model text)
    WHERE r.mgte_outcome = 'stored' AND r.mgte_model IS DISTINCT FROM coalesce(table_model, r.mgte_model)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'mgte: the server embeds with model %, but the embeddings of % were made by %',
            served, {tbl_literal}::regclass, table_model
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'vectors of two models cannot be mixed in one table: serve the table''s model, or re-embed the table with mgte_reembed()';
    END IF;

    -- Step 1 of the protocol: lock the entries this lease still holds.
    PERFORM FROM {queue} AS q, jsonb_to_recordset(results) AS r({key_defs}, mgte_lease uuid)
    WHERE {q=r} AND q.lease = r.mgte_lease
    ORDER BY {keys.q} FOR UPDATE OF q;

    -- Step 2, with a newer snapshot: settle by the text each row holds now.
    RETURN QUERY
    WITH r AS MATERIALIZED (
        SELECT r.*, embeddings[r.mgte_item] AS mgte_embedding, sparsevecs[r.mgte_item] AS mgte_sparsevec
        FROM jsonb_to_recordset(results) AS r({key_defs}, mgte_lease uuid, mgte_text_md5 text,
            mgte_outcome text, mgte_error text, mgte_item integer, mgte_sparse jsonb, mgte_model text,
            mgte_tokens integer, mgte_truncated boolean)),
    mine AS MATERIALIZED (
        SELECT r.*, q.attempts AS mgte_attempts,
               coalesce(md5(t.{text}::text) = r.mgte_text_md5, false) AS mgte_current
        FROM r JOIN {queue} AS q ON {q=r} AND q.lease = r.mgte_lease
        LEFT JOIN {tbl} AS t ON {t=r}),
    done AS (
        DELETE FROM {queue} AS q USING mine AS m
        WHERE {q=m} AND m.mgte_current AND m.mgte_outcome IN ('stored', 'failed')),
    given_back AS (
        UPDATE {queue} AS q
        SET lease = NULL, leased_until = NULL,
            attempts = q.attempts + CASE WHEN m.mgte_current AND m.mgte_outcome = 'retry' THEN 1 ELSE 0 END,
            last_error = CASE WHEN m.mgte_current THEN m.mgte_error ELSE q.last_error END
        FROM mine AS m
        WHERE {q=m} AND NOT (m.mgte_current AND m.mgte_outcome IN ('stored', 'failed'))
        RETURNING 1),
    embedded AS (
        INSERT INTO {embeddings} AS e ({keys}, embedding, sparse, sparsevec, model, text_md5, tokens, truncated, embedded_at)
        SELECT {keys.m}, m.mgte_embedding::{vector}, m.mgte_sparse, m.mgte_sparsevec::{sparsevec}, m.mgte_model,
               m.mgte_text_md5, m.mgte_tokens, m.mgte_truncated, now()
        FROM mine AS m WHERE m.mgte_current AND m.mgte_outcome = 'stored'
        ON CONFLICT ({keys}) DO UPDATE SET embedding = EXCLUDED.embedding, sparse = EXCLUDED.sparse,
            sparsevec = EXCLUDED.sparsevec, model = EXCLUDED.model, text_md5 = EXCLUDED.text_md5,
            tokens = EXCLUDED.tokens, truncated = EXCLUDED.truncated, embedded_at = EXCLUDED.embedded_at
        RETURNING 1),
    dead AS (
        INSERT INTO {failed} AS f ({keys}, text_md5, attempts, error)
        SELECT {keys.m}, m.mgte_text_md5, m.mgte_attempts + 1, m.mgte_error
        FROM mine AS m WHERE m.mgte_current AND m.mgte_outcome = 'failed'
        ON CONFLICT ({keys}) DO UPDATE SET text_md5 = EXCLUDED.text_md5, attempts = EXCLUDED.attempts,
            error = EXCLUDED.error, failed_at = now()
        RETURNING 1)
    SELECT (SELECT count(*) FROM embedded), (SELECT count(*) FROM dead), (SELECT count(*) FROM given_back);

    IF table_model IS NULL THEN
        PERFORM mgte._adopt_model({tbl_literal}::regclass);
    END IF;
    -- A re-embedding whose queue is empty takes over.
    IF EXISTS (SELECT FROM mgte.reembeddings WHERE prefix = {prefix_literal}) AND NOT EXISTS (SELECT FROM {queue}) THEN
        PERFORM mgte._authorize({tbl_literal}::regclass);
        PERFORM mgte._finish_reembed({tbl_literal}::regclass);
    END IF;
END
$body$
$sql$
WHEN 'requeue' THEN $sql$
CREATE OR REPLACE FUNCTION {name}(failed_only boolean) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $body$
DECLARE
    queued bigint;
BEGIN
    IF failed_only THEN
        WITH back AS (DELETE FROM {failed} RETURNING {keys})
        INSERT INTO {queue} AS q ({keys}) SELECT {keys} FROM back
        {requeue_on_conflict};
    ELSE
        INSERT INTO {queue} AS q ({keys}) SELECT {keys.t} FROM {tbl} AS t WHERE t.{text} IS NOT NULL
        ON CONFLICT ({keys}) DO NOTHING;
    END IF;
    GET DIAGNOSTICS queued = ROW_COUNT;
    PERFORM pg_catalog.pg_notify('mgte', {tbl_literal}::regclass::text);
    RETURN queued;
END
$body$
$sql$
WHEN 'changed' THEN $sql$
CREATE OR REPLACE FUNCTION {name}(changed_keys jsonb) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $body$
DECLARE
    queued bigint;
BEGIN
    IF changed_keys IS NULL THEN
        {changed_all}
    ELSE
        {changed_given}
    END IF;
    IF queued > 0 THEN
        PERFORM pg_catalog.pg_notify('mgte', {tbl_literal}::regclass::text);
    END IF;
    RETURN queued;
END
$body$
$sql$
WHEN 'status' THEN $sql$
CREATE OR REPLACE FUNCTION {name}()
RETURNS TABLE (pending bigint, in_progress bigint, failed bigint, oldest_pending interval,
               last_embedded timestamptz, embedded_last_minute bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $body$
    SELECT q.pending, q.in_progress, (SELECT count(*) FROM {failed}), q.oldest,
           (SELECT max(embedded_at) FROM {embeddings}),
           (SELECT count(*) FROM {embeddings} WHERE embedded_at > now() - interval '1 minute')
    FROM (SELECT count(*) FILTER (WHERE leased_until IS NULL OR leased_until < now()) AS pending,
                 count(*) FILTER (WHERE leased_until >= now()) AS in_progress,
                 now() - min(enqueued_at) AS oldest
          FROM {queue}) AS q
$body$
$sql$
END
$template$;

-- How the trigger hands changed rows on: `changed` selects their keys and mgte_text.
-- Async: queue them (a plain INSERT first for new rows, half the cost of the upsert).
-- Sync: embed them now; the queue entries go first (see the protocol), and what the server
-- could not do (when on_failure = 'queue') is queued again.
CREATE OR REPLACE FUNCTION mgte._enqueue_template(changed text, inserting boolean)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $template$
SELECT replace($sql$
    -- Only the table's own set embeds in sync mode; a re-embedding's set always queues.
    IF cfg.mode = 'sync' AND cfg.prefix = {prefix_literal} THEN
        DELETE FROM {queue} AS q USING (CHANGED) AS c WHERE {q=c};
        WITH changed AS MATERIALIZED (SELECT c.*, row_number() OVER () AS mgte_ord FROM (CHANGED) AS c),
        encoded AS MATERIALIZED (
            SELECT * FROM mgte._encode((SELECT array_agg(mgte_text ORDER BY mgte_ord) FROM changed), cfg.dim,
                                       cfg.sparse, cfg.vocab_size, cfg.sync_timeout_ms, cfg.on_failure = 'queue',
                                       cfg.model)),
        stored AS (
            INSERT INTO {embeddings} AS e ({keys}, embedding, sparse, sparsevec, model, text_md5, tokens, truncated, embedded_at)
            SELECT {keys.c}, x.mgte_embedding::{vector}, x.mgte_sparse, x.mgte_sparsevec::{sparsevec}, x.mgte_model,
                   md5(c.mgte_text), x.mgte_tokens, x.mgte_truncated, now()
            FROM changed AS c JOIN encoded AS x USING (mgte_ord)
            ON CONFLICT ({keys}) DO UPDATE SET embedding = EXCLUDED.embedding, sparse = EXCLUDED.sparse,
                sparsevec = EXCLUDED.sparsevec, model = EXCLUDED.model, text_md5 = EXCLUDED.text_md5,
                tokens = EXCLUDED.tokens, truncated = EXCLUDED.truncated, embedded_at = EXCLUDED.embedded_at)
        INSERT INTO {queue} AS q ({keys}) SELECT {keys} FROM changed
        WHERE mgte_ord NOT IN (SELECT mgte_ord FROM encoded)
        {requeue_on_conflict};
        GET DIAGNOSTICS queued = ROW_COUNT;
        IF cfg.model IS NULL THEN
            PERFORM mgte._adopt_model(cfg.tbl);
        END IF;
    ELSE
$sql$ || CASE WHEN inserting THEN $sql$
        BEGIN
            INSERT INTO {queue} ({keys}) SELECT {keys} FROM (CHANGED) AS c;
        EXCEPTION WHEN unique_violation THEN
            INSERT INTO {queue} AS q ({keys}) SELECT {keys} FROM (CHANGED) AS c
            {requeue_on_conflict};
        END;
$sql$ ELSE $sql$
        INSERT INTO {queue} AS q ({keys}) SELECT {keys} FROM (CHANGED) AS c
        {requeue_on_conflict};
$sql$ END || $sql$
        GET DIAGNOSTICS queued = ROW_COUNT;
    END IF;
$sql$, 'CHANGED', changed)
$template$;

-- Logical mode's counterpart of the trigger (see sql/logical.sql): brings the keys that
-- `changed` selects up to date with the rows as they are now, whatever happened to them in
-- between. Rows gone (or with a NULL text) lose their entries; rows whose text is neither
-- the one stored nor a dead letter's are queued. The queue entries are locked first, in
-- key order, as the trigger does (see the protocol).
CREATE OR REPLACE FUNCTION mgte._changed_template(changed text)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $template$
SELECT replace($sql$
        PERFORM FROM {queue} AS q WHERE ({keys.q}) IN (CHANGED) ORDER BY {keys.q} FOR UPDATE OF q;
        DELETE FROM {queue} AS q
        WHERE ({keys.q}) IN (CHANGED) AND NOT EXISTS (SELECT FROM {tbl} AS t WHERE {t=q} AND t.{text} IS NOT NULL);
        DELETE FROM {embeddings} AS e
        WHERE ({keys.e}) IN (CHANGED) AND NOT EXISTS (SELECT FROM {tbl} AS t WHERE {t=e} AND t.{text} IS NOT NULL);
        DELETE FROM {failed} AS f
        WHERE ({keys.f}) IN (CHANGED) AND NOT EXISTS (SELECT FROM {tbl} AS t WHERE {t=f} AND t.{text} IS NOT NULL);
        -- A new text deserves new tries.
        DELETE FROM {failed} AS f USING {tbl} AS t
        WHERE ({keys.f}) IN (CHANGED) AND {t=f} AND f.text_md5 IS DISTINCT FROM md5(t.{text}::text);
        INSERT INTO {queue} AS q ({keys})
        SELECT {keys.t} FROM {tbl} AS t
        WHERE ({keys.t}) IN (CHANGED) AND t.{text} IS NOT NULL
          AND NOT EXISTS (SELECT FROM {embeddings} AS e WHERE {e=t} AND e.text_md5 = md5(t.{text}::text))
          AND NOT EXISTS (SELECT FROM {failed} AS f WHERE {f=t})
        {requeue_on_conflict};
        GET DIAGNOSTICS queued = ROW_COUNT;
$sql$, 'CHANGED', changed)
$template$;

-- --- The SQL interface ---------------------------------------------------------------------

CREATE OR REPLACE FUNCTION mgte_enable(
    tbl regclass,
    text_column name,
    dim integer DEFAULT NULL,
    sparse boolean DEFAULT true,
    mode text DEFAULT 'async',
    on_failure text DEFAULT 'queue',
    sync_timeout_ms integer DEFAULT 5000,
    indexes boolean DEFAULT true)
RETURNS regclass
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel record;
    col record;
    existing mgte.enabled;
    upcoming mgte.enabled;
    cfg mgte.enabled;
    info jsonb;
    problem text;
BEGIN
    IF tbl IS NULL OR text_column IS NULL OR sparse IS NULL THEN
        RAISE EXCEPTION 'mgte_enable needs a table, a text column and sparse true or false'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF mode IS NULL OR mode NOT IN ('async', 'sync', 'logical') THEN
        RAISE EXCEPTION 'mode must be ''async'', ''sync'' or ''logical'', not %', coalesce(quote_literal(mode), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF mode = 'logical' AND current_setting('wal_level') <> 'logical' THEN
        RAISE EXCEPTION 'mode ''logical'' needs wal_level = logical, and this server runs with wal_level = %',
            current_setting('wal_level')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL; or use mode ''async''';
    END IF;
    IF on_failure IS NULL OR on_failure NOT IN ('queue', 'error') THEN
        RAISE EXCEPTION 'on_failure must be ''queue'' or ''error'', not %', coalesce(quote_literal(on_failure), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'in sync mode, ''queue'' hands rows to the worker when the server cannot be reached, '
                         '''error'' fails the statement';
    END IF;
    IF sync_timeout_ms IS NULL OR sync_timeout_ms <= 0 THEN
        RAISE EXCEPTION 'sync_timeout_ms must be a positive number of milliseconds, not %',
            coalesce(sync_timeout_ms::text, 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF dim IS NOT NULL AND dim <= 0 THEN
        RAISE EXCEPTION 'dim must be positive, not %', dim USING ERRCODE = 'invalid_parameter_value';
    END IF;

    SELECT c.relkind, n.nspname INTO rel
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = tbl;
    IF rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', tbl USING ERRCODE = 'wrong_object_type';
    END IF;
    IF rel.nspname = 'mgte' THEN
        RAISE EXCEPTION 'cannot enable auto-embedding on mgte''s own table %', tbl USING ERRCODE = 'wrong_object_type';
    END IF;
    PERFORM mgte._check_followable(tbl);
    IF mode <> 'logical' AND EXISTS (SELECT FROM pg_catalog.pg_subscription_rel r
                                     WHERE r.srrelid IN (SELECT mgte._trigger_relations(tbl))) THEN
        RAISE EXCEPTION '% is written by a logical replication subscription, whose apply worker fires no '
                        'statement-level trigger', tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('SELECT mgte_enable(%L, %L, mode => ''logical''), which reads the applied changes '
                                'from the WAL', tbl::text, text_column);
    END IF;
    PERFORM mgte._authorize(tbl);

    SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) AS type, t.typcategory INTO col
    FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
    WHERE a.attrelid = tbl AND a.attname = text_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of table % does not exist', text_column, tbl USING ERRCODE = 'undefined_column';
    END IF;
    IF col.typcategory <> 'S' THEN
        RAISE EXCEPTION 'column "%" of table % is of type %, not text', text_column, tbl, col.type
            USING ERRCODE = 'datatype_mismatch', HINT = 'enable a text, varchar or char column';
    END IF;

    cfg.tbl := tbl;
    cfg.text_column := text_column;
    cfg.sparse := sparse;
    cfg.mode := mode;
    cfg.on_failure := on_failure;
    cfg.sync_timeout_ms := sync_timeout_ms;
    cfg.enabled_at := now();
    SELECT array_agg(a.attname ORDER BY k.n) INTO cfg.key_columns
    FROM pg_catalog.pg_index i
    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = tbl AND i.indisprimary;
    IF cfg.key_columns IS NULL THEN
        RAISE EXCEPTION 'table % has no primary key', tbl
            USING ERRCODE = 'invalid_table_definition',
                  HINT = format('mgte finds rows by their primary key; add one, e.g. ALTER TABLE %s ADD PRIMARY KEY (id)', tbl);
    END IF;

    IF mode = 'logical' THEN
        problem := mgte._replica_identity_problem(tbl, cfg.key_columns);
        IF problem IS NOT NULL THEN
            RAISE EXCEPTION '%', problem
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = format('ALTER TABLE %s REPLICA IDENTITY DEFAULT; or use mode ''async''', tbl);
        END IF;
        -- Writes wait until this commits: each is either queued below or published.
        EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', tbl);
    END IF;

    SELECT * INTO existing FROM mgte.enabled e WHERE e.tbl = mgte_enable.tbl;
    IF FOUND THEN
        IF existing.text_column <> mgte_enable.text_column OR existing.sparse <> mgte_enable.sparse
           OR existing.dim <> coalesce(mgte_enable.dim, existing.dim) THEN
            RAISE EXCEPTION 'table % already has auto-embedding of column "%" (dim %, sparse %)',
                tbl, existing.text_column, existing.dim, existing.sparse
                USING ERRCODE = 'duplicate_object',
                      HINT = 'mgte_disable(table) first to set it up differently (it drops the stored embeddings)';
        END IF;
        cfg := mgte._provision(cfg);  -- changes mode, on_failure and sync_timeout_ms only
        IF existing.mode = 'logical' AND mode <> 'logical' THEN
            -- What the slot had not yet handed on: every set, brought up to date.
            EXECUTE format('SELECT %s(NULL)', mgte._function(cfg, 'changed'));
            upcoming := mgte._next_set(tbl);
            IF upcoming.prefix IS NOT NULL THEN
                EXECUTE format('SELECT %s(NULL)', mgte._function(upcoming, 'changed'));
            END IF;
        END IF;
        RETURN cfg.embeddings;
    END IF;

    cfg.vocab_size := 250048;  -- the XLM-R vocabulary of every mGTE model
    BEGIN
        info := @extschema@.mgte_info() -> 'model';
        cfg.vocab_size := (info ->> 'vocab_size')::integer;
        cfg.dim := coalesce(dim, (info ->> 'hidden_size')::integer);
        cfg.model := info ->> 'id';
        IF cfg.dim > (info ->> 'hidden_size')::integer THEN
            RAISE EXCEPTION 'dim % is more than the % dimensions of the served model %', dim, info ->> 'hidden_size',
                info ->> 'id' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF sparse AND (info ->> 'sparse')::boolean IS FALSE THEN
            RAISE EXCEPTION 'the served model % has no sparse (lexical) output', info ->> 'id'
                USING ERRCODE = 'feature_not_supported', HINT = 'pass sparse => false to store dense embeddings only';
        END IF;
    EXCEPTION WHEN connection_failure THEN
        -- The table adopts the model of the first vectors stored for it.
        IF dim IS NULL THEN
            RAISE EXCEPTION 'mgte_enable needs the embedding size, and the mgte server cannot be reached to ask it'
                USING ERRCODE = 'connection_failure',
                      HINT = 'start the server, or pass dim => 768 (the size of gte-multilingual-base)';
        END IF;
        cfg.dim := dim;
    END;

    cfg := mgte._provision(cfg);
    IF coalesce(indexes, true) THEN
        PERFORM mgte._authorize(tbl);
        PERFORM mgte._create_indexes(tbl);
    END IF;
    -- The rows already there: the triggers (or in logical mode the LOCK above) hold the
    -- table lock until commit, so no row can slip between this and them.
    EXECUTE format('SELECT %s(false)', mgte._function(cfg, 'requeue'));
    RETURN cfg.embeddings;
END
$$;

COMMENT ON FUNCTION mgte_enable(regclass, name, integer, boolean, text, text, integer, boolean) IS
'embed a table''s text column automatically: creates mgte.<table>_embeddings (dense vector(dim), sparse jsonb, sparsevec, model, md5 of the text) with HNSW indexes (unless indexes => false), the view <table>_search, the triggers, and queues the rows already there; mode async (default: mgte worker embeds them shortly after), sync (inside the statement; on_failure queue or error) or logical (as async, but with no trigger: mgte worker reads the changes through logical decoding; needs wal_level = logical). Only the table''s owner may call it; the objects it creates belong to the owner';

CREATE OR REPLACE FUNCTION mgte_create_indexes(tbl regclass)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM mgte._config(tbl);
    PERFORM mgte._authorize(tbl);
    PERFORM mgte._create_indexes(tbl);
END
$$;

-- Indexes in schema mgte need its CREATE privilege, which only the installer has. Safe to
-- build with that role: PostgreSQL builds an index as the table's owner, in a
-- security-restricted operation, and these index pgvector's types only.
CREATE OR REPLACE FUNCTION mgte._create_indexes(tbl regclass)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM mgte._consume_authorization(tbl);
    PERFORM mgte._create_index_on(mgte._config(tbl));
END
$$;

CREATE OR REPLACE FUNCTION mgte._create_index_on(cfg mgte.enabled)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    name text := mgte._clip((SELECT relname FROM pg_catalog.pg_class WHERE oid = cfg.embeddings), 49);
BEGIN
    -- The embeddings are L2-normalised, so inner product ranks as cosine does, and faster.
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %s USING hnsw (embedding %s.vector_ip_ops)',
                   name || '_embedding_idx', cfg.embeddings, mgte._vector_schema());
    IF cfg.sparse THEN
        EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %s USING hnsw (sparsevec %s.sparsevec_ip_ops)',
                       name || '_sparsevec_idx', cfg.embeddings, mgte._vector_schema());
    END IF;
END
$$;

COMMENT ON FUNCTION mgte_create_indexes(regclass) IS
'create the HNSW indexes of a table''s embeddings (dense, and sparsevec) if they are missing; mgte_enable does unless indexes => false, e.g. to build them after a large backfill';

-- <table>_search next to the table, unless that name is taken: SELECT * FROM docs_search
-- after SET mgte.query = '...' (and mgte.k, 10 by default). It names the table as text,
-- not as a regclass constant, so that it does not keep DROP TABLE from working.
CREATE OR REPLACE FUNCTION mgte._create_search_view(cfg mgte.enabled, owner text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel record;
    view_name text;
BEGIN
    SELECT c.relname, n.nspname INTO rel
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = cfg.tbl;
    -- A name cut to fit would be another table's too: the oid keeps it apart.
    view_name := format('%I.%I', rel.nspname, CASE WHEN octet_length(rel.relname) <= 56 THEN rel.relname
                                                   ELSE mgte._clip(rel.relname, 45) || '_' || cfg.tbl::oid END
                                              || '_search');
    IF to_regclass(view_name) IS NOT NULL THEN
        RAISE NOTICE 'mgte: % already exists, so no search view was created; use mgte_search(%L, ...)',
            view_name, cfg.tbl::text;
        RETURN;
    END IF;
    EXECUTE format(
        'CREATE VIEW %s WITH (security_invoker = true) AS '
        'SELECT %s, s.body AS %I, s.rank AS search_rank, s.dense_score, s.sparse_score, s.fused_score, s.rerank_score '
        'FROM @extschema@.mgte_search(%L::text::regclass, mgte._setting_query(), k => mgte._setting_k()) AS s '
        'ORDER BY s.rank',
        view_name,
        (SELECT string_agg(format('(s.key ->> %L)::%s AS %I', a.attname,
                                  pg_catalog.format_type(a.atttypid, a.atttypmod), a.attname), ', ' ORDER BY u.n)
         FROM unnest(cfg.key_columns) WITH ORDINALITY AS u(k, n)
         JOIN pg_catalog.pg_attribute a ON a.attrelid = cfg.tbl AND a.attname = u.k),
        cfg.text_column, cfg.tbl::text);
    EXECUTE format('COMMENT ON VIEW %s IS %L', view_name,
                   format('mgte hybrid search of %s: SET mgte.query = ''...'' (and mgte.k), then SELECT from it', cfg.tbl));
    EXECUTE format('ALTER VIEW %s OWNER TO %I', view_name, owner);
    UPDATE mgte.enabled e SET search_view = view_name::regclass WHERE e.tbl = cfg.tbl;
END
$$;

CREATE OR REPLACE FUNCTION mgte_disable(tbl regclass, keep_embeddings boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM mgte.enabled e WHERE e.tbl = mgte_disable.tbl) THEN
        RAISE NOTICE 'table % has no auto-embedding', tbl;
        RETURN;
    END IF;
    PERFORM mgte._authorize(tbl);
    PERFORM mgte._unprovision(tbl, coalesce(keep_embeddings, false));
END
$$;

COMMENT ON FUNCTION mgte_disable(regclass, boolean) IS
'stop auto-embedding a table: drops its triggers, queue and failures, and its embeddings unless keep_embeddings';

CREATE OR REPLACE FUNCTION mgte_retry_failed(tbl regclass)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg mgte.enabled := mgte._config(tbl);
    moved bigint;
BEGIN
    PERFORM mgte._check_owner(tbl);
    EXECUTE format('SELECT %s(true)', mgte._function(cfg, 'requeue')) INTO moved;
    RETURN moved;
END
$$;

COMMENT ON FUNCTION mgte_retry_failed(regclass) IS
'queue the rows of a table that the mgte server rejected (its dead letters) again; returns how many';

-- Asks a worker to compare `tbl` whole with what is stored (mgte.compare_requests) and wakes it.
CREATE OR REPLACE FUNCTION mgte._request_compare(tbl regclass)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO mgte.compare_requests (tbl) VALUES (tbl) ON CONFLICT DO NOTHING;
    PERFORM pg_catalog.pg_notify('mgte', tbl::text);
END
$$;

-- After writes that no trigger saw (triggers disabled or dropped by hand, a bulk load under
-- session_replication_role = replica): the table's triggers made again as its mode wants
-- them, and a worker asked to compare it whole (mgte.compare_requests).
CREATE OR REPLACE FUNCTION mgte_resync(tbl regclass)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM mgte._config(tbl);
    PERFORM mgte._authorize(tbl);
    PERFORM mgte._resync(tbl);
END
$$;
COMMENT ON FUNCTION mgte_resync(regclass) IS
'make a table''s auto-embedding triggers again and have mgte worker compare it whole with what is stored (after writes no trigger saw); only its owner may call it';

-- DDL only, and a row in mgte's catalog.
CREATE OR REPLACE FUNCTION mgte._resync(tbl regclass)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM mgte._consume_authorization(tbl);
    PERFORM mgte._switch_capture(mgte._config(tbl));
    PERFORM mgte._request_compare(tbl);
END
$$;

-- Lets `reader` search a table: SELECT on the table, its embeddings and its search view.
CREATE OR REPLACE FUNCTION mgte_grant_search(tbl regclass, reader name)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg mgte.enabled := mgte._config(tbl);
BEGIN
    PERFORM mgte._check_owner(tbl);
    EXECUTE format('GRANT SELECT ON %s, %s TO %I', cfg.tbl, cfg.embeddings, reader);
    IF cfg.search_view IS NOT NULL THEN
        EXECUTE format('GRANT SELECT ON %s TO %I', cfg.search_view, reader);
    END IF;
END
$$;

COMMENT ON FUNCTION mgte_grant_search(regclass, name) IS
'let a role search a table with mgte_search and its search view: grants SELECT on the table, its embeddings and the view (REVOKE them to undo); the role also needs USAGE on the table''s schema';

-- The counts come from each table's _status function, so a role sees the tables whose
-- queue it may read: their owners, and the worker role.
CREATE OR REPLACE FUNCTION mgte_status(tbl regclass DEFAULT NULL)
RETURNS TABLE (table_name regclass, text_column name, mode text, model text, pending bigint, in_progress bigint,
               failed bigint, oldest_pending interval, last_embedded timestamptz, embedded_last_minute bigint,
               reembed_model text, reembed_pending bigint, reembed_stored bigint, compare_requested timestamptz)
LANGUAGE plpgsql STABLE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg mgte.enabled;
    upcoming mgte.enabled;
BEGIN
    FOR cfg IN SELECT * FROM mgte.enabled e
               WHERE (mgte_status.tbl IS NULL OR e.tbl = mgte_status.tbl)
                 AND pg_catalog.has_function_privilege(mgte._function(e, 'status', true), 'EXECUTE')
               ORDER BY e.tbl::text
    LOOP
        table_name := cfg.tbl;
        text_column := cfg.text_column;
        mode := cfg.mode;
        model := cfg.model;
        EXECUTE format('SELECT * FROM %s()', mgte._function(cfg, 'status'))
            INTO pending, in_progress, failed, oldest_pending, last_embedded, embedded_last_minute;
        upcoming := mgte._next_set(cfg.tbl);
        reembed_model := upcoming.model;
        reembed_pending := NULL;
        reembed_stored := NULL;
        IF upcoming.prefix IS NOT NULL THEN
            EXECUTE format('SELECT s.pending + s.in_progress, (SELECT count(*) FROM %s) FROM %s() AS s',
                           upcoming.embeddings, mgte._function(upcoming, 'status'))
                INTO reembed_pending, reembed_stored;
        END IF;
        compare_requested := (SELECT r.requested_at FROM mgte.compare_requests r WHERE r.tbl = cfg.tbl);
        RETURN NEXT;
    END LOOP;
END
$$;

COMMENT ON FUNCTION mgte_status(regclass) IS
'auto-embedding progress of each enabled table (or one) whose owner you are: the model of its stored embeddings, rows pending and in progress, dead letters, age of the oldest pending row, last embedding stored, embeddings stored in the last minute, and while it is re-embedded (mgte_reembed) the new model, the rows it still has to embed and those it has stored';

-- Re-embeds a table with another model without a gap: a second set of embeddings fills
-- (run `mgte worker --socket` at a server that serves `model`) while searches keep using
-- the first; when it is complete it takes over in one transaction, and mgte_status shows
-- the new model. Point mgte.socket_path at the new server then.
CREATE OR REPLACE FUNCTION mgte_reembed(tbl regclass, model text DEFAULT NULL)
RETURNS regclass
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg mgte.enabled := mgte._config(tbl);
    info jsonb;
    upcoming mgte.enabled := mgte._next_set(tbl);
    queued bigint;
BEGIN
    PERFORM mgte._check_owner(tbl);
    IF upcoming.prefix IS NOT NULL THEN
        RAISE EXCEPTION 'table % is already being re-embedded with model %', tbl, upcoming.model
            USING ERRCODE = 'object_in_use', HINT = 'mgte_status(table) shows its progress';
    END IF;
    IF model IS NULL THEN
        info := @extschema@.mgte_info() -> 'model';
        model := info ->> 'id';
        IF (info ->> 'hidden_size')::integer < cfg.dim THEN
            RAISE EXCEPTION 'the served model % has % dimensions, fewer than the % of table %', model,
                info ->> 'hidden_size', cfg.dim, tbl USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    IF model = cfg.model THEN
        RAISE EXCEPTION 'the embeddings of % are made by model % already', tbl, model
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'name the new model: mgte_reembed(table, model => ''...''), as `mgte info` shows it';
    END IF;
    PERFORM mgte._authorize(tbl);
    upcoming := mgte._start_reembed(tbl, model);
    EXECUTE format('SELECT %s(false)', mgte._function(upcoming, 'requeue')) INTO queued;
    IF queued = 0 THEN  -- nothing to embed: no settle will come to swap it in
        PERFORM mgte._authorize(tbl);
        PERFORM mgte._finish_reembed(tbl);
    END IF;
    RETURN upcoming.embeddings;
END
$$;

COMMENT ON FUNCTION mgte_reembed(regclass, text) IS
're-embed a table with another model (by default the one this session''s server serves) into a second set of embeddings, while searches keep using the first; it takes over once complete. Run mgte worker at a server with the new model; mgte_status shows the progress';

-- Sync mode's and the searches' call to the server: one row per text (mgte_ord counts
-- from 1), in the text forms the per-table functions store. With fall_back, a server that
-- cannot do the work gives no rows and a WARNING instead of an error, and the caller queues
-- the texts. A served model other than `model` (when given) is such a failure too.
CREATE OR REPLACE FUNCTION mgte._encode(
    texts text[], dim integer, want_sparse boolean, vocab_size integer, timeout_ms integer, fall_back boolean,
    model text)
RETURNS TABLE (mgte_ord bigint, mgte_embedding text, mgte_sparse jsonb, mgte_sparsevec text, mgte_model text,
               mgte_tokens integer, mgte_truncated boolean)
LANGUAGE plpython3u VOLATILE
SET search_path = pg_catalog, pg_temp
AS $python$
#MGTE_IMPORT
return mgte.encode_rows(plpy, GD, texts, dim, want_sparse, vocab_size, timeout_ms, fall_back, model)
$python$;

-- The DBA's choice of the socket for this session: the setting of the role in this database,
-- of the role, of the database, or of the server configuration, in PostgreSQL's own order of
-- precedence, whatever the session set itself. Members of mgte_choose_socket (and
-- superusers) use the session's setting instead (mgte_udf.plpython decides which).
CREATE OR REPLACE FUNCTION mgte._configured_socket_path()
RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(
        (SELECT substr(s.setting, length('mgte.socket_path=') + 1)
         FROM pg_catalog.pg_db_role_setting d, unnest(d.setconfig) WITH ORDINALITY AS s(setting, n)
         WHERE s.setting LIKE 'mgte.socket\_path=%'
           AND d.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()))
           AND d.setrole IN (0, (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = session_user))
         -- role in database, then role, then database
         ORDER BY d.setrole = 0, d.setdatabase = 0
         LIMIT 1),
        (SELECT f.setting FROM pg_catalog.pg_file_settings f
         WHERE f.name = 'mgte.socket_path' AND f.applied AND f.error IS NULL
         ORDER BY f.seqno DESC LIMIT 1))
$$;

-- _provision and _unprovision stay executable by all: the table owners' calls of
-- mgte_enable and mgte_disable reach them, and they act only on a proof of ownership.
REVOKE ALL ON FUNCTION mgte._consume_authorization(regclass), mgte._drop_objects(mgte.enabled, boolean),
    mgte._create_set(mgte.enabled, text), mgte._drop_set(mgte.enabled, text, boolean),
    mgte._give_set(mgte.enabled, text), mgte._create_triggers(mgte.enabled, text), mgte._drop_triggers(regclass, text),
    mgte._create_triggers_on(mgte.enabled, regclass, text), mgte._drop_triggers_on(regclass, text),
    mgte._create_functions(mgte.enabled), mgte._request_compare(regclass),
    mgte._switch_capture(mgte.enabled),
    mgte._create_index_on(mgte.enabled),
    mgte._create_search_view(mgte.enabled, text) FROM PUBLIC;

-- --- Event triggers ---------------------------------------------------------------------

-- A dropped table takes its mgte objects along.
CREATE OR REPLACE FUNCTION mgte._on_drop()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg mgte.enabled;
    tables oid[];
BEGIN
    FOR cfg IN SELECT e.* FROM mgte.enabled e
               JOIN pg_catalog.pg_event_trigger_dropped_objects() d ON d.objid = e.tbl::oid
               WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objsubid = 0
    LOOP
        PERFORM mgte._drop_objects(cfg, false);
    END LOOP;
    -- A dropped partition took its rows along: its table is compared whole.
    WITH dropped AS (
        DELETE FROM mgte.partitions p USING pg_catalog.pg_event_trigger_dropped_objects() d
        WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objsubid = 0 AND d.objid = p.partition::oid
        RETURNING p.tbl)
    SELECT array_agg(DISTINCT dropped.tbl::oid) INTO tables FROM dropped;
    PERFORM mgte._request_compare(e.tbl) FROM mgte.enabled e WHERE e.tbl::oid = ANY (tables);
END
$$;

DROP EVENT TRIGGER IF EXISTS mgte_drop;
CREATE EVENT TRIGGER mgte_drop ON sql_drop EXECUTE FUNCTION mgte._on_drop();

-- DDL that changes an enabled table's partitions or inheritance. An enabled table made a
-- partition or put in an inheritance tree is refused (see _check_followable). A partition
-- created or attached under one gets each set's triggers, and one detached loses them (found
-- by comparing the partitions with the relations that have the set's triggers). Rows that
-- came in with an attached partition or left with a detached one are seen by no trigger and
-- no logical decoding: the table goes to mgte.compare_requests, for a worker to compare
-- whole, since this runs as the installer and must not run the owner's functions. A
-- partition just created has no rows.
CREATE OR REPLACE FUNCTION mgte._on_partition()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s record;
    cfg mgte.enabled;
    handler regprocedure;
    rel regclass;
    created oid[];
    changed boolean;
BEGIN
    -- An enabled table that this DDL made a partition or put in an inheritance tree.
    PERFORM mgte._check_followable(e.tbl) FROM mgte.enabled e
    WHERE EXISTS (SELECT FROM pg_catalog.pg_event_trigger_ddl_commands() c
                  WHERE c.classid = 'pg_catalog.pg_class'::regclass
                    AND (c.objid = e.tbl OR EXISTS (SELECT FROM pg_catalog.pg_inherits i
                                                    WHERE (i.inhrelid, i.inhparent) IN ((c.objid, e.tbl), (e.tbl, c.objid)))));
    SELECT coalesce(array_agg(c.objid), '{}') INTO created FROM pg_catalog.pg_event_trigger_ddl_commands() c
    WHERE c.command_tag = 'CREATE TABLE' AND c.classid = 'pg_catalog.pg_class'::regclass;
    FOR s IN
        SELECT sets.cfg, sets.triggers FROM mgte._sets() sets
        JOIN pg_catalog.pg_class t ON t.oid = (sets.cfg).tbl
        WHERE t.relkind = 'p' AND EXISTS (
            SELECT FROM pg_catalog.pg_event_trigger_ddl_commands() c
            WHERE c.classid = 'pg_catalog.pg_class'::regclass
              AND (c.objid = t.oid OR t.oid IN (SELECT relid FROM pg_catalog.pg_partition_ancestors(c.objid))))
    LOOP
        cfg := s.cfg;
        handler := pg_catalog.to_regprocedure(mgte._function(cfg, 'on_change', true));
        changed := false;
        FOR rel IN SELECT DISTINCT g.tgrelid::regclass FROM pg_catalog.pg_trigger g
                   WHERE g.tgfoid = handler AND g.tgrelid NOT IN (SELECT mgte._trigger_relations(cfg.tbl))
        LOOP
            PERFORM mgte._drop_triggers_on(rel, s.triggers);
            DELETE FROM mgte.partitions p WHERE p.partition = rel;
            changed := true;
        END LOOP;
        FOR rel IN SELECT r FROM mgte._trigger_relations(cfg.tbl) AS r
                   WHERE r <> cfg.tbl AND NOT EXISTS (SELECT FROM pg_catalog.pg_trigger g
                                                      WHERE g.tgrelid = r AND g.tgfoid = handler)
        LOOP
            PERFORM mgte._create_triggers_on(cfg, rel, s.triggers);
            changed := changed OR rel::oid <> ALL (created);
        END LOOP;
        IF changed THEN
            PERFORM mgte._request_compare(cfg.tbl);
        END IF;
    END LOOP;
END
$$;

DROP EVENT TRIGGER IF EXISTS mgte_partition;
CREATE EVENT TRIGGER mgte_partition ON ddl_command_end WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
    EXECUTE FUNCTION mgte._on_partition();

-- A table's mgte objects follow it to a new owner (ALTER TABLE ... OWNER TO), so that its
-- functions run with the new owner's rights and the old owner keeps none.
CREATE OR REPLACE FUNCTION mgte._on_alter()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg mgte.enabled;
    problem text;
BEGIN
    -- PostgreSQL would refuse UPDATE and DELETE on a table in logical mode whose replica
    -- identity its published key no longer covers: the ALTER is refused instead.
    FOR cfg IN SELECT e.* FROM mgte.enabled e JOIN pg_catalog.pg_event_trigger_ddl_commands() c ON c.objid = e.tbl
               WHERE e.mode = 'logical'
    LOOP
        problem := mgte._replica_identity_problem(cfg.tbl, cfg.key_columns);
        IF problem IS NOT NULL THEN
            RAISE EXCEPTION 'mgte: %', problem
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = format('switch the table to another mode first: SELECT mgte_enable(%L, %L, mode => ''async'')',
                                    cfg.tbl::text, cfg.text_column);
        END IF;
    END LOOP;
    -- The functions name the table, its text column and its key columns: a table renamed or
    -- moved (or in a schema renamed) gets its functions made again; a column renamed or
    -- dropped, or the primary key dropped or changed, is refused.
    FOR cfg IN
        SELECT (s.cfg).* FROM mgte._sets() s
        JOIN pg_catalog.pg_class t ON t.oid = (s.cfg).tbl
        WHERE EXISTS (SELECT FROM pg_catalog.pg_event_trigger_ddl_commands() c
                      WHERE (c.classid = 'pg_catalog.pg_class'::regclass AND c.objid = t.oid)
                         OR (c.classid = 'pg_catalog.pg_namespace'::regclass AND c.objid = t.relnamespace))
    LOOP
        SELECT string_agg(quote_ident(name), ', ') INTO problem
        FROM unnest(cfg.text_column || cfg.key_columns) AS name
        WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a
                          WHERE a.attrelid = cfg.tbl AND a.attname = name AND a.attnum > 0 AND NOT a.attisdropped);
        IF problem IS NOT NULL THEN
            RAISE EXCEPTION 'mgte: auto-embedding of % reads its column %, which cannot be renamed or dropped while it is enabled',
                cfg.tbl, problem
                USING ERRCODE = 'dependent_objects_still_exist',
                      HINT = format('SELECT mgte_disable(%L) first (mgte_enable again afterwards embeds the rows anew)',
                                    cfg.tbl::text);
        END IF;
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_index i
                       WHERE i.indrelid = cfg.tbl AND i.indisprimary
                         AND ARRAY(SELECT a.attname FROM unnest(i.indkey) AS k(attnum)
                                   JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                                   ORDER BY 1) = ARRAY(SELECT unnest(cfg.key_columns) ORDER BY 1)) THEN
            RAISE EXCEPTION 'mgte: auto-embedding of % finds its rows by their primary key (%), which must stay while it is enabled',
                cfg.tbl, array_to_string(cfg.key_columns, ', ')
                USING ERRCODE = 'dependent_objects_still_exist',
                      HINT = format('to rebuild it, drop and add it in one ALTER TABLE; to change it, SELECT mgte_disable(%L) '
                                    'first (mgte_enable again afterwards embeds the rows anew)', cfg.tbl::text);
        END IF;
        PERFORM mgte._create_functions(cfg);
    END LOOP;
    FOR cfg IN
        SELECT (s.cfg).* FROM mgte._sets() s
        JOIN pg_catalog.pg_class t ON t.oid = (s.cfg).tbl
        JOIN pg_catalog.pg_class q ON q.oid = (s.cfg).queue
        WHERE t.relowner <> q.relowner
    LOOP
        PERFORM mgte._give_set(cfg, mgte._owner(cfg.tbl));
        IF cfg.search_view IS NOT NULL THEN
            EXECUTE format('ALTER VIEW %s OWNER TO %I', cfg.search_view, mgte._owner(cfg.tbl));
        END IF;
    END LOOP;
END
$$;

DROP EVENT TRIGGER IF EXISTS mgte_alter;
CREATE EVENT TRIGGER mgte_alter ON ddl_command_end WHEN TAG IN ('ALTER TABLE', 'ALTER SCHEMA')
    EXECUTE FUNCTION mgte._on_alter();

-- An ALTER TABLE that rewrites a column (ALTER COLUMN ... TYPE ... USING) may change every
-- text without a write that a trigger or the slot sees: the table is compared whole.
CREATE OR REPLACE FUNCTION mgte._on_rewrite()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rewritten oid := pg_catalog.pg_event_trigger_table_rewrite_oid();
BEGIN
    IF pg_catalog.pg_event_trigger_table_rewrite_reason() & 4 <> 0 THEN  -- AT_REWRITE_COLUMN_REWRITE
        PERFORM mgte._request_compare(e.tbl) FROM mgte.enabled e
        WHERE e.tbl::oid = rewritten OR e.tbl IN (SELECT relid FROM pg_catalog.pg_partition_ancestors(rewritten));
    END IF;
END
$$;

DROP EVENT TRIGGER IF EXISTS mgte_rewrite;
CREATE EVENT TRIGGER mgte_rewrite ON table_rewrite EXECUTE FUNCTION mgte._on_rewrite();
