-- Auto-embedding: mgte_enable sets a table up; statement-level triggers queue the keys of
-- changed rows (or, in sync mode, embed them inside the statement); `mgte worker` drains the
-- queue through the mgte._claim / _complete / _fail / _release functions below, which hold
-- all of its SQL.
--
-- For each enabled table, schema mgte holds three tables keyed like it:
--   <name>_embeddings  the stored outputs, and which model made them from which text (md5)
--   <name>_queue       keys waiting to be embedded; `generation` grows with every change of
--                      the text, and a worker stores a result only if the generation it
--                      claimed is still current, so a stale text is never stored
--   <name>_failed      rows the server rejected (dead letters), with the error
-- Their writes never touch the user's table, so they cannot re-fire its triggers.

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

-- jsonb_build_object(...) of the key columns, qualified: how a row's key travels as jsonb.
CREATE OR REPLACE FUNCTION mgte._key_object(cfg mgte.enabled, qualifier text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format('jsonb_build_object(%s)', string_agg(format('%L, %I.%I', k, qualifier, k), ', ' ORDER BY n))
    FROM unnest(cfg.key_columns) WITH ORDINALITY AS u(k, n)
$$;

-- INSERT ... ON CONFLICT that stores results read from `source`, a query with the key
-- columns and mgte_embedding, mgte_sparse, mgte_sparsevec, mgte_model, mgte_text_md5,
-- mgte_tokens, mgte_truncated (the text forms of mgte_udf.records). Returns the keys stored.
CREATE OR REPLACE FUNCTION mgte._store_statement(cfg mgte.enabled, source text)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format(
        'INSERT INTO %1$s AS t (%2$s, embedding, sparse, sparsevec, model, text_md5, tokens, truncated, embedded_at) '
        'SELECT %3$s, r.mgte_embedding::%4$s, r.mgte_sparse, r.mgte_sparsevec::%5$s, r.mgte_model, '
        '       r.mgte_text_md5, r.mgte_tokens, r.mgte_truncated, pg_catalog.now() '
        'FROM (%6$s) AS r '
        'ON CONFLICT (%2$s) DO UPDATE SET embedding = EXCLUDED.embedding, sparse = EXCLUDED.sparse, '
        '    sparsevec = EXCLUDED.sparsevec, model = EXCLUDED.model, text_md5 = EXCLUDED.text_md5, '
        '    tokens = EXCLUDED.tokens, truncated = EXCLUDED.truncated, embedded_at = EXCLUDED.embedded_at '
        'RETURNING %7$s',
        cfg.embeddings, mgte._keys(cfg), mgte._keys(cfg, 'r'),
        mgte._vector_type('vector', cfg.dim), mgte._vector_type('sparsevec', cfg.vocab_size),
        source, mgte._keys(cfg, 't'))
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

-- Only the table's owner (or a member of its owning role) may change its setup.
CREATE OR REPLACE FUNCTION mgte._check_owner(tbl regclass)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT pg_catalog.pg_has_role(session_user,
                                  (SELECT relowner FROM pg_catalog.pg_class WHERE oid = tbl), 'MEMBER') THEN
        RAISE EXCEPTION 'must be the owner of table %', tbl USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;

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
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel record;
    col record;
    keys name[];
    key_defs text;
    existing mgte.enabled;
    cfg mgte.enabled;
    info jsonb;
    vocab integer := 250048;  -- the XLM-R vocabulary of every mGTE model
    prefix text;
BEGIN
    IF tbl IS NULL OR text_column IS NULL OR sparse IS NULL THEN
        RAISE EXCEPTION 'mgte_enable needs a table, a text column and sparse true or false'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF mode IS NULL OR mode NOT IN ('async', 'sync') THEN
        RAISE EXCEPTION 'mode must be ''async'' or ''sync'', not %', coalesce(quote_literal(mode), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
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

    SELECT c.relname, c.relkind, n.nspname INTO rel
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = tbl;
    IF rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', tbl USING ERRCODE = 'wrong_object_type';
    END IF;
    IF rel.nspname = 'mgte' THEN
        RAISE EXCEPTION 'cannot enable auto-embedding on mgte''s own table %', tbl USING ERRCODE = 'wrong_object_type';
    END IF;
    PERFORM mgte._check_owner(tbl);

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

    SELECT array_agg(a.attname ORDER BY k.n) INTO keys
    FROM pg_catalog.pg_index i
    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = tbl AND i.indisprimary;
    IF keys IS NULL THEN
        RAISE EXCEPTION 'table % has no primary key', tbl
            USING ERRCODE = 'invalid_table_definition',
                  HINT = format('mgte finds rows by their primary key; add one, e.g. ALTER TABLE %s ADD PRIMARY KEY (id)', tbl);
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
        UPDATE mgte.enabled e
        SET mode = mgte_enable.mode, on_failure = mgte_enable.on_failure, sync_timeout_ms = mgte_enable.sync_timeout_ms
        WHERE e.tbl = mgte_enable.tbl;
        RETURN existing.embeddings;
    END IF;

    BEGIN
        info := @extschema@.mgte_info();
        vocab := (info -> 'model' ->> 'vocab_size')::integer;
        dim := coalesce(dim, (info -> 'model' ->> 'hidden_size')::integer);
        IF sparse AND (info -> 'model' ->> 'sparse')::boolean IS FALSE THEN
            RAISE EXCEPTION 'the served model % has no sparse (lexical) output', info -> 'model' ->> 'id'
                USING ERRCODE = 'feature_not_supported', HINT = 'pass sparse => false to store dense embeddings only';
        END IF;
    EXCEPTION WHEN connection_failure THEN
        IF dim IS NULL THEN
            RAISE EXCEPTION 'mgte_enable needs the embedding size, and the mgte server cannot be reached to ask it'
                USING ERRCODE = 'connection_failure',
                      HINT = 'start the server, or pass dim => 768 (the size of gte-multilingual-base)';
        END IF;
    END;

    prefix := left(rel.relname, 40);
    IF to_regclass(format('mgte.%I', prefix || '_embeddings')) IS NOT NULL
       OR to_regclass(format('mgte.%I', prefix || '_queue')) IS NOT NULL
       OR to_regclass(format('mgte.%I', prefix || '_failed')) IS NOT NULL THEN
        prefix := left(rel.relname, 30) || '_' || tbl::oid;
    END IF;

    cfg.tbl := tbl;
    cfg.key_columns := keys;
    key_defs := mgte._key_definitions(cfg);
    EXECUTE format(
        'CREATE TABLE mgte.%I (%s, embedding %s NOT NULL, sparse jsonb, sparsevec %s, model text NOT NULL, '
        'text_md5 text NOT NULL, tokens integer NOT NULL, truncated boolean NOT NULL, '
        'embedded_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (%s))',
        prefix || '_embeddings', key_defs, mgte._vector_type('vector', dim),
        mgte._vector_type('sparsevec', vocab), mgte._keys(cfg));
    EXECUTE format('CREATE INDEX ON mgte.%I (embedded_at)', prefix || '_embeddings');

    EXECUTE format(
        'CREATE TABLE mgte.%I (%s, generation bigint NOT NULL DEFAULT 1, enqueued_at timestamptz NOT NULL DEFAULT now(), '
        'attempts integer NOT NULL DEFAULT 0, leased_until timestamptz, last_error text, PRIMARY KEY (%s))',
        prefix || '_queue', key_defs, mgte._keys(cfg));
    EXECUTE format(
        'CREATE TABLE mgte.%I (%s, text_md5 text, attempts integer NOT NULL, error text NOT NULL, '
        'failed_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (%s))',
        prefix || '_failed', key_defs, mgte._keys(cfg));

    INSERT INTO mgte.enabled (tbl, text_column, key_columns, embeddings, queue, failed, dim, vocab_size, sparse,
                              mode, on_failure, sync_timeout_ms)
    VALUES (tbl, text_column, keys, format('mgte.%I', prefix || '_embeddings')::regclass,
            format('mgte.%I', prefix || '_queue')::regclass, format('mgte.%I', prefix || '_failed')::regclass,
            dim, vocab, sparse, mode, on_failure, sync_timeout_ms)
    RETURNING * INTO cfg;
    EXECUTE format('COMMENT ON TABLE %s IS %L', cfg.embeddings,
                   format('mgte embeddings of %s.%I (see mgte_enable)', tbl, text_column));
    EXECUTE format('COMMENT ON TABLE %s IS %L', cfg.queue, format('rows of %s waiting for mgte worker', tbl));
    EXECUTE format('COMMENT ON TABLE %s IS %L', cfg.failed,
                   format('rows of %s the mgte server rejected; mgte_retry_failed(%L) queues them again', tbl, tbl));
    EXECUTE format('GRANT SELECT ON %s, %s, %s TO %I', cfg.embeddings, cfg.queue, cfg.failed,
                   (SELECT pg_catalog.pg_get_userbyid(relowner) FROM pg_catalog.pg_class WHERE oid = tbl));

    IF coalesce(indexes, true) THEN
        PERFORM @extschema@.mgte_create_indexes(tbl);
    END IF;
    PERFORM mgte._create_search_view(cfg);

    EXECUTE format('CREATE TRIGGER mgte_insert AFTER INSERT ON %s REFERENCING NEW TABLE AS mgte_new '
                   'FOR EACH STATEMENT EXECUTE FUNCTION mgte._on_change()', tbl);
    -- PostgreSQL allows no column list ("UPDATE OF") with transition tables: the trigger
    -- compares the texts itself, so updates of other columns queue nothing.
    EXECUTE format('CREATE TRIGGER mgte_update AFTER UPDATE ON %s REFERENCING OLD TABLE AS mgte_old '
                   'NEW TABLE AS mgte_new FOR EACH STATEMENT EXECUTE FUNCTION mgte._on_change()', tbl);
    EXECUTE format('CREATE TRIGGER mgte_delete AFTER DELETE ON %s REFERENCING OLD TABLE AS mgte_old '
                   'FOR EACH STATEMENT EXECUTE FUNCTION mgte._on_change()', tbl);
    EXECUTE format('CREATE TRIGGER mgte_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION mgte._on_change()', tbl);

    -- The rows already there: the triggers above hold the table lock until commit, so no
    -- row can slip between this and them.
    EXECUTE format('INSERT INTO %s (%s) SELECT %s FROM %s WHERE %I IS NOT NULL',
                   cfg.queue, mgte._keys(cfg), mgte._keys(cfg), tbl, text_column);
    PERFORM pg_catalog.pg_notify('mgte', tbl::text);
    RETURN cfg.embeddings;
END
$$;

COMMENT ON FUNCTION mgte_enable(regclass, name, integer, boolean, text, text, integer, boolean) IS
'embed a table''s text column automatically: creates mgte.<table>_embeddings (dense vector(dim), sparse jsonb, sparsevec, model, md5 of the text) with HNSW indexes (unless indexes => false), the view <table>_search, the triggers, and queues the rows already there; mode async (default: mgte worker embeds them shortly after) or sync (inside the statement; on_failure queue or error)';

CREATE OR REPLACE FUNCTION mgte_create_indexes(tbl regclass)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg mgte.enabled := mgte._config(tbl);
    name text := (SELECT relname FROM pg_catalog.pg_class WHERE oid = cfg.embeddings);
BEGIN
    PERFORM mgte._check_owner(tbl);
    -- The embeddings are L2-normalised, so inner product ranks as cosine does, and faster.
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %s USING hnsw (embedding %s.vector_ip_ops)',
                   left(name, 50) || '_embedding_idx', cfg.embeddings, mgte._vector_schema());
    IF cfg.sparse THEN
        EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %s USING hnsw (sparsevec %s.sparsevec_ip_ops)',
                       left(name, 50) || '_sparsevec_idx', cfg.embeddings, mgte._vector_schema());
    END IF;
END
$$;

COMMENT ON FUNCTION mgte_create_indexes(regclass) IS
'create the HNSW indexes of a table''s embeddings (dense, and sparsevec) if they are missing; mgte_enable does unless indexes => false, e.g. to build them after a large backfill';

-- <table>_search next to the table, unless that name is taken: SELECT * FROM docs_search
-- after SET mgte.query = '...' (and mgte.k, 10 by default). It names the table as text,
-- not as a regclass constant, so that it does not keep DROP TABLE from working.
CREATE OR REPLACE FUNCTION mgte._create_search_view(cfg mgte.enabled)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel record;
    view_name text;
BEGIN
    SELECT c.relname, n.nspname, pg_catalog.pg_get_userbyid(c.relowner) AS owner INTO rel
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = cfg.tbl;
    view_name := format('%I.%I', rel.nspname, left(rel.relname, 56) || '_search');
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
    EXECUTE format('ALTER VIEW %s OWNER TO %I', view_name, rel.owner);
    UPDATE mgte.enabled e SET search_view = view_name::regclass WHERE e.tbl = cfg.tbl;
END
$$;

CREATE OR REPLACE FUNCTION mgte_disable(tbl regclass, keep_embeddings boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg mgte.enabled;
BEGIN
    SELECT * INTO cfg FROM mgte.enabled e WHERE e.tbl = mgte_disable.tbl;
    IF NOT FOUND THEN
        RAISE NOTICE 'table % has no auto-embedding', tbl;
        RETURN;
    END IF;
    PERFORM mgte._check_owner(tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS mgte_insert ON %1$s; DROP TRIGGER IF EXISTS mgte_update ON %1$s; '
                   'DROP TRIGGER IF EXISTS mgte_delete ON %1$s; DROP TRIGGER IF EXISTS mgte_truncate ON %1$s', tbl);
    EXECUTE format('DROP TABLE %s, %s', cfg.queue, cfg.failed);
    IF cfg.search_view IS NOT NULL THEN
        EXECUTE format('DROP VIEW IF EXISTS %s', cfg.search_view);
    END IF;
    IF NOT coalesce(keep_embeddings, false) THEN
        EXECUTE format('DROP TABLE %s', cfg.embeddings);
    END IF;
    DELETE FROM mgte.enabled e WHERE e.tbl = mgte_disable.tbl;
END
$$;

COMMENT ON FUNCTION mgte_disable(regclass, boolean) IS
'stop auto-embedding a table: drops its triggers, queue and failures, and its embeddings unless keep_embeddings';

-- The statement-level trigger of every enabled table.
CREATE OR REPLACE FUNCTION mgte._on_change()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg mgte.enabled;
    keys text;
    changed text;
    upsert text;
    queued bigint;
BEGIN
    SELECT * INTO cfg FROM mgte.enabled e WHERE e.tbl = TG_RELID::regclass;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    keys := mgte._keys(cfg);

    IF TG_OP = 'TRUNCATE' THEN
        EXECUTE format('TRUNCATE %s, %s, %s', cfg.embeddings, cfg.queue, cfg.failed);
        RETURN NULL;
    END IF;

    -- Rows gone: deleted, moved to another key, or whose text became NULL.
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        EXECUTE format(
            'WITH gone AS MATERIALIZED (SELECT %1$s FROM mgte_old %2$s), '
            'a AS (DELETE FROM %3$s WHERE (%1$s) IN (SELECT %1$s FROM gone)), '
            'b AS (DELETE FROM %4$s WHERE (%1$s) IN (SELECT %1$s FROM gone)) '
            'DELETE FROM %5$s WHERE (%1$s) IN (SELECT %1$s FROM gone)',
            keys,
            CASE WHEN TG_OP = 'UPDATE'
                 THEN format('EXCEPT SELECT %s FROM mgte_new WHERE %I IS NOT NULL', keys, cfg.text_column) END,
            cfg.embeddings, cfg.queue, cfg.failed);
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN NULL;
    END IF;

    -- Rows whose text is new: inserted, or updated to a different text.
    changed := format('SELECT %s, n.%I::text AS mgte_text FROM mgte_new AS n WHERE n.%I IS NOT NULL',
                      mgte._keys(cfg, 'n'), cfg.text_column, cfg.text_column);
    IF TG_OP = 'UPDATE' THEN
        changed := changed || format(
            ' AND NOT EXISTS (SELECT FROM mgte_old AS o WHERE %s AND o.%I IS NOT DISTINCT FROM n.%I)',
            mgte._keys_match(cfg, 'o', 'n'), cfg.text_column, cfg.text_column);
        -- A new text deserves a new try.
        EXECUTE format('DELETE FROM %s WHERE (%s) IN (SELECT %s FROM (%s) AS c)', cfg.failed, keys, keys, changed);
    END IF;

    IF cfg.mode = 'sync' THEN
        -- Embed now; what the server could not do (when on_failure = 'queue') goes to the
        -- queue. Queue entries of stored rows are removed, which also stops a worker that
        -- holds one of them from storing an older text.
        EXECUTE format(
            'WITH changed AS MATERIALIZED (SELECT c.*, row_number() OVER () AS mgte_ord FROM (%1$s) AS c), '
            'encoded AS MATERIALIZED (SELECT * FROM mgte._encode('
            '    (SELECT array_agg(mgte_text ORDER BY mgte_ord) FROM changed), $1, $2, $3, $4, $5)), '
            'stored AS (%2$s), '
            'dequeued AS (DELETE FROM %3$s WHERE (%4$s) IN (SELECT %4$s FROM stored)) '
            'INSERT INTO %3$s AS q (%4$s) SELECT %4$s FROM changed '
            'WHERE mgte_ord NOT IN (SELECT mgte_ord FROM encoded) '
            'ON CONFLICT (%4$s) DO UPDATE SET generation = q.generation + 1, enqueued_at = now(), last_error = NULL',
            changed,
            mgte._store_statement(cfg, 'SELECT * FROM changed JOIN encoded USING (mgte_ord)'),
            cfg.queue, keys)
        USING cfg.dim, cfg.sparse, cfg.vocab_size, cfg.sync_timeout_ms, cfg.on_failure = 'queue';
    ELSE
        upsert := format(
            'INSERT INTO %1$s AS q (%2$s) SELECT %2$s FROM (%3$s) AS c '
            'ON CONFLICT (%2$s) DO UPDATE SET generation = q.generation + 1, enqueued_at = now(), last_error = NULL',
            cfg.queue, keys, changed);
        IF TG_OP = 'INSERT' THEN
            -- New keys are not queued yet (deletes take their entries along), and a plain
            -- INSERT costs half as much as the upsert, which stays the fallback.
            BEGIN
                EXECUTE format('INSERT INTO %1$s (%2$s) SELECT %2$s FROM (%3$s) AS c', cfg.queue, keys, changed);
            EXCEPTION WHEN unique_violation THEN
                EXECUTE upsert;
            END;
        ELSE
            EXECUTE upsert;
        END IF;
    END IF;
    GET DIAGNOSTICS queued = ROW_COUNT;
    IF queued > 0 THEN
        PERFORM pg_catalog.pg_notify('mgte', cfg.tbl::text);
    END IF;
    RETURN NULL;
END
$$;

-- Sync mode's call to the server: one row per text (mgte_ord counts from 1), in the text
-- forms _store_statement reads. With fall_back, a server that cannot do the work gives no
-- rows and a WARNING instead of an error, and the caller queues the texts.
CREATE OR REPLACE FUNCTION mgte._encode(
    texts text[], dim integer, want_sparse boolean, vocab_size integer, timeout_ms integer, fall_back boolean)
RETURNS TABLE (mgte_ord bigint, mgte_embedding text, mgte_sparse jsonb, mgte_sparsevec text, mgte_model text,
               mgte_text_md5 text, mgte_tokens integer, mgte_truncated boolean)
LANGUAGE plpython3u VOLATILE
SET search_path = pg_catalog, pg_temp
AS $python$
#MGTE_IMPORT
return mgte.encode_rows(plpy, GD, texts, dim, want_sparse, vocab_size, timeout_ms, fall_back)
$python$;

-- The worker's side of the queue. Claims up to batch_size rows that no live lease holds,
-- leases them, and returns their keys (as jsonb), generation and text. Queue entries
-- whose row is gone or whose text is NULL are dropped on the way.
CREATE OR REPLACE FUNCTION mgte._claim(tbl regclass, batch_size integer, lease_seconds double precision)
RETURNS TABLE (key jsonb, generation bigint, attempts integer, body text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg mgte.enabled := mgte._config(tbl);
    keys text := mgte._keys(cfg);
BEGIN
    RETURN QUERY EXECUTE format(
        'WITH picked AS ('
        '    SELECT %1$s, s.%2$I::text AS mgte_body FROM %3$s AS q LEFT JOIN %4$s AS s ON %5$s '
        '    WHERE q.leased_until IS NULL OR q.leased_until < now() '
        '    LIMIT $1 FOR UPDATE OF q SKIP LOCKED), '
        'claimed AS ('
        '    UPDATE %3$s AS q SET leased_until = now() + $2 * interval ''1 second'', attempts = q.attempts + 1 '
        '    FROM picked AS p WHERE %6$s AND p.mgte_body IS NOT NULL '
        '    RETURNING %7$s, q.generation, q.attempts, p.mgte_body), '
        'orphans AS (DELETE FROM %3$s AS q USING picked AS p WHERE %6$s AND p.mgte_body IS NULL) '
        'SELECT %8$s, c.generation, c.attempts, c.mgte_body FROM claimed AS c',
        mgte._keys(cfg, 'q'), cfg.text_column, cfg.queue, cfg.tbl, mgte._keys_match(cfg, 's', 'q'),
        mgte._keys_match(cfg, 'q', 'p'), mgte._keys(cfg, 'q'), mgte._key_object(cfg, 'c'))
    USING batch_size, lease_seconds;
END
$$;

-- The start of a statement that settles claimed rows, given as $1, an array of objects with
-- the key columns, mgte_generation and `fields`: the CTE "done" deletes the queue entries
-- that still have the generation claimed and returns their keys and attempts; the others
-- (their text changed meanwhile) are released, to be claimed again for the newer text.
CREATE OR REPLACE FUNCTION mgte._settle_statement(cfg mgte.enabled, fields text)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format(
        'WITH r AS MATERIALIZED (SELECT * FROM jsonb_to_recordset($1) AS r(%1$s, mgte_generation bigint, %2$s)), '
        'done AS (DELETE FROM %3$s AS q USING r WHERE %4$s AND q.generation = r.mgte_generation '
        '    RETURNING %5$s, q.attempts), '
        'released AS (UPDATE %3$s AS q SET leased_until = NULL FROM r '
        '    WHERE %4$s AND q.generation <> r.mgte_generation) ',
        mgte._key_definitions(cfg), fields, cfg.queue, mgte._keys_match(cfg, 'q', 'r'), mgte._keys(cfg, 'q'))
$$;

-- Stores the results of claimed rows (the mgte_* fields of _store_statement); returns how
-- many were stored.
CREATE OR REPLACE FUNCTION mgte._complete(tbl regclass, results jsonb)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg mgte.enabled := mgte._config(tbl);
    stored bigint;
BEGIN
    EXECUTE mgte._settle_statement(cfg, 'mgte_embedding text, mgte_sparse jsonb, mgte_sparsevec text, '
                                        'mgte_model text, mgte_text_md5 text, mgte_tokens integer, mgte_truncated boolean')
        || format(', stored AS (%s) SELECT count(*) FROM stored',
                  mgte._store_statement(cfg, format('SELECT r.* FROM r JOIN done USING (%s)', mgte._keys(cfg))))
    INTO stored USING results;
    RETURN stored;
END
$$;

-- Moves claimed rows the server rejected (mgte_text_md5, mgte_error) to the dead-letter
-- table; returns how many.
CREATE OR REPLACE FUNCTION mgte._fail(tbl regclass, failures jsonb)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg mgte.enabled := mgte._config(tbl);
    keys text := mgte._keys(cfg);
    failed bigint;
BEGIN
    EXECUTE mgte._settle_statement(cfg, 'mgte_text_md5 text, mgte_error text') || format(
        ', moved AS (INSERT INTO %1$s AS f (%2$s, text_md5, attempts, error) '
        '    SELECT %3$s, r.mgte_text_md5, done.attempts, r.mgte_error FROM r JOIN done USING (%2$s) '
        '    ON CONFLICT (%2$s) DO UPDATE SET text_md5 = EXCLUDED.text_md5, attempts = EXCLUDED.attempts, '
        '        error = EXCLUDED.error, failed_at = now() RETURNING 1) '
        'SELECT count(*) FROM moved',
        cfg.failed, keys, mgte._keys(cfg, 'r'))
    INTO failed USING failures;
    RETURN failed;
END
$$;

-- Gives claimed rows back after a transient failure (server down, overloaded, timed out),
-- recording why: keys is an array of key objects.
CREATE OR REPLACE FUNCTION mgte._release(tbl regclass, keys jsonb, error text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg mgte.enabled := mgte._config(tbl);
BEGIN
    EXECUTE format(
        'UPDATE %s AS q SET leased_until = NULL, last_error = $2 '
        'FROM jsonb_to_recordset($1) AS r(%s) WHERE %s',
        cfg.queue, mgte._key_definitions(cfg), mgte._keys_match(cfg, 'q', 'r'))
    USING keys, error;
END
$$;

REVOKE ALL ON FUNCTION mgte._claim(regclass, integer, double precision), mgte._complete(regclass, jsonb),
    mgte._fail(regclass, jsonb), mgte._release(regclass, jsonb, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION mgte_retry_failed(tbl regclass)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg mgte.enabled := mgte._config(tbl);
    keys text := mgte._keys(cfg);
    moved bigint;
BEGIN
    PERFORM mgte._check_owner(tbl);
    EXECUTE format(
        'WITH back AS (DELETE FROM %1$s RETURNING %2$s) '
        'INSERT INTO %3$s AS q (%2$s) SELECT %2$s FROM back '
        'ON CONFLICT (%2$s) DO UPDATE SET generation = q.generation + 1, enqueued_at = now(), last_error = NULL',
        cfg.failed, keys, cfg.queue);
    GET DIAGNOSTICS moved = ROW_COUNT;
    PERFORM pg_catalog.pg_notify('mgte', cfg.tbl::text);
    RETURN moved;
END
$$;

COMMENT ON FUNCTION mgte_retry_failed(regclass) IS
'queue the rows of a table that the mgte server rejected (its dead letters) again; returns how many';

CREATE OR REPLACE FUNCTION mgte_status(tbl regclass DEFAULT NULL)
RETURNS TABLE (table_name regclass, text_column name, mode text, pending bigint, in_progress bigint,
               failed bigint, oldest_pending interval, last_embedded timestamptz, embedded_last_minute bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg mgte.enabled;
BEGIN
    FOR cfg IN SELECT * FROM mgte.enabled e
               WHERE (mgte_status.tbl IS NULL OR e.tbl = mgte_status.tbl)
                 AND pg_catalog.has_table_privilege(session_user, e.tbl, 'SELECT')
               ORDER BY e.tbl::text
    LOOP
        table_name := cfg.tbl;
        text_column := cfg.text_column;
        mode := cfg.mode;
        EXECUTE format('SELECT count(*) FILTER (WHERE leased_until IS NULL OR leased_until < now()), '
                       'count(*) FILTER (WHERE leased_until >= now()), now() - min(enqueued_at) FROM %s', cfg.queue)
            INTO pending, in_progress, oldest_pending;
        EXECUTE format('SELECT count(*) FROM %s', cfg.failed) INTO failed;
        EXECUTE format('SELECT max(embedded_at) FROM %s', cfg.embeddings) INTO last_embedded;
        EXECUTE format('SELECT count(*) FROM %s WHERE embedded_at > now() - interval ''1 minute''', cfg.embeddings)
            INTO embedded_last_minute;
        RETURN NEXT;
    END LOOP;
END
$$;

COMMENT ON FUNCTION mgte_status(regclass) IS
'auto-embedding progress of each enabled table (or one): rows pending and in progress, dead letters, age of the oldest pending row, last embedding stored, embeddings stored in the last minute';

-- A dropped table takes its mgte objects along.
CREATE OR REPLACE FUNCTION mgte._on_drop()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg mgte.enabled;
BEGIN
    FOR cfg IN SELECT e.* FROM mgte.enabled e
               JOIN pg_catalog.pg_event_trigger_dropped_objects() d ON d.objid = e.tbl::oid
               WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objsubid = 0
    LOOP
        EXECUTE format('DROP TABLE IF EXISTS %s, %s, %s', cfg.embeddings, cfg.queue, cfg.failed);
        IF cfg.search_view IS NOT NULL THEN
            EXECUTE format('DROP VIEW IF EXISTS %s', cfg.search_view);
        END IF;
        DELETE FROM mgte.enabled e WHERE e.tbl::oid = cfg.tbl::oid;
    END LOOP;
END
$$;

DROP EVENT TRIGGER IF EXISTS mgte_drop;
CREATE EVENT TRIGGER mgte_drop ON sql_drop EXECUTE FUNCTION mgte._on_drop();
