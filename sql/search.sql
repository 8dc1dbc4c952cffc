-- Hybrid retrieval over a table set up with mgte_enable: a dense leg (HNSW on the normalised
-- embeddings, inner product) and a sparse leg (HNSW on the sparsevec), their candidates
-- pooled and scored exactly (dense inner product, and the lexical score on the unpruned
-- jsonb weights), fused (the paper's dense + lambda * sparse, or reciprocal rank fusion),
-- and the best reranked by the cross-encoder in one server round trip. One statement, so
-- mgte_search_explain shows how each leg runs.

CREATE OR REPLACE FUNCTION mgte_sparse_score(q jsonb, d jsonb)
RETURNS real
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(sum(w.value::float8 * (d ->> w.key)::float8), 0)::real
    FROM jsonb_each_text(q) AS w
    WHERE d ? w.key
$$;

COMMENT ON FUNCTION mgte_sparse_score(jsonb, jsonb) IS
'lexical score of two mgte_sparse() outputs: the sum of the products of the weights of the tokens they share';

-- pgvector's operators live in its schema, which is only known once it is installed.
DO $$
BEGIN
    EXECUTE format(
        'CREATE OR REPLACE FUNCTION mgte_sparse_score(q sparsevec, d sparsevec) RETURNS real '
        'LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp '
        'AS %L',
        format('SELECT (-(q OPERATOR(%s.<#>) d))::real', mgte._vector_schema()));
END
$$;

COMMENT ON FUNCTION mgte_sparse_score(sparsevec, sparsevec) IS
'lexical score of two sparsevec weights (mgte_sparsevec(), or the stored ones, pruned to their 1000 largest weights): their inner product';

CREATE OR REPLACE FUNCTION mgte_sparsevec(input text)
RETURNS sparsevec
LANGUAGE plpython3u STABLE STRICT PARALLEL SAFE COST 1000 SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $python$
#MGTE_IMPORT
return mgte.sparsevec(plpy, GD, input)
$python$;

COMMENT ON FUNCTION mgte_sparsevec(text) IS
'mGTE lexical weights of a text as a sparsevec indexed by token id + 1 (dimension: the vocabulary size), keeping the 1000 largest weights as auto-embedding stores them';

-- The search statement. Parameters: $1 query vector, $2 query sparsevec, $3 query sparse
-- jsonb, $4 k, $5 candidates per leg, $6 sparse_weight, $7 rrf_k, $8 rerank_top (0: no
-- rerank), $9 filter, $10 query text. Returns key, body, rank and the dense, sparse, fused
-- and rerank scores.
CREATE OR REPLACE FUNCTION mgte._search_statement(
    cfg mgte.enabled, k integer, candidates integer, fusion text, sparse_weight double precision, rrf_k integer,
    rerank_top integer, filter jsonb, sparse_leg boolean)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    vs text := mgte._vector_schema();
    keys text := mgte._keys(cfg);
    conditions text[] := ARRAY[]::text[];
    column_name text;
    column_type text;
    value jsonb;
    source text;
    fused text;
    statement text;
BEGIN
    IF k IS NULL OR k < 1 THEN
        RAISE EXCEPTION 'k must be at least 1, not %', coalesce(k::text, 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF candidates IS NULL OR candidates < k THEN
        RAISE EXCEPTION 'candidates must be at least k (%), not %', k, coalesce(candidates::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value', HINT = 'each leg proposes this many rows before fusion';
    END IF;
    IF fusion IS NULL OR fusion NOT IN ('weighted', 'rrf') THEN
        RAISE EXCEPTION 'fusion must be ''weighted'' or ''rrf'', not %', coalesce(quote_literal(fusion), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF sparse_weight IS NULL OR rrf_k IS NULL OR rrf_k < 1 OR rerank_top IS NULL OR rerank_top < 0 THEN
        RAISE EXCEPTION 'sparse_weight must not be NULL, rrf_k must be at least 1 and rerank_top at least 0'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF filter IS NOT NULL AND jsonb_typeof(filter) <> 'object' THEN
        RAISE EXCEPTION 'filter must be a JSON object of column: value pairs, not %', filter
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- Filters: each key a column of the table, each value compared as that column's type.
    -- Names are quoted and values travel as the parameter $9, so nothing is pasted as SQL.
    FOR column_name, value IN SELECT * FROM jsonb_each(coalesce(filter, '{}')) LOOP
        SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) INTO column_type
        FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = cfg.tbl AND a.attname = column_name AND a.attnum > 0 AND NOT a.attisdropped;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'filter names column %, which table % does not have', quote_ident(column_name), cfg.tbl
                USING ERRCODE = 'undefined_column';
        END IF;
        IF jsonb_typeof(value) = 'null' THEN
            conditions := conditions || format('t.%I IS NULL', column_name);
        ELSIF column_type IN ('jsonb', 'json') THEN
            conditions := conditions || format('t.%I::jsonb = $9 -> %L', column_name, column_name);
        ELSIF jsonb_typeof(value) IN ('string', 'number', 'boolean') THEN
            conditions := conditions || format('t.%I = ($9 ->> %L)::%s', column_name, column_name, column_type);
        ELSE
            RAISE EXCEPTION 'filter value for % must be a string, number, boolean or null, not %',
                quote_ident(column_name), value USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;

    source := format('%s AS e', cfg.embeddings);
    IF cardinality(conditions) > 0 THEN
        source := source || format(' JOIN %s AS t ON %s WHERE %s', cfg.tbl, mgte._keys_match(cfg, 't', 'e'),
                                   array_to_string(conditions, ' AND '));
    END IF;
    fused := CASE fusion
        WHEN 'weighted' THEN '(dense + $6 * coalesce(sparse, 0))::real'
        ELSE '(coalesce(1.0 / ($7 + dense_rank), 0) + coalesce(1.0 / ($7 + sparse_rank), 0))::real' END;

    statement := format(
        'WITH dense_leg AS MATERIALIZED ('
        '    SELECT %1$s, e.embedding OPERATOR(%2$s.<#>) $1 AS distance FROM %3$s '
        '    ORDER BY e.embedding OPERATOR(%2$s.<#>) $1 LIMIT $5), '
        'sparse_leg AS MATERIALIZED (%4$s), '
        'ranked AS ('
        '    SELECT %5$s, row_number() OVER (ORDER BY distance, %5$s) AS dense_rank, NULL::bigint AS sparse_rank '
        '    FROM dense_leg '
        '    UNION ALL '
        '    SELECT %5$s, NULL, row_number() OVER (ORDER BY distance, %5$s) FROM sparse_leg), '
        'pool AS (SELECT %5$s, min(dense_rank) AS dense_rank, min(sparse_rank) AS sparse_rank FROM ranked GROUP BY %5$s), '
        'scored AS ('
        '    SELECT %6$s AS key, t.%7$I::text AS body, '
        '           (-(e.embedding OPERATOR(%2$s.<#>) $1))::real AS dense, '
        '           CASE WHEN $3 IS NOT NULL THEN @extschema@.mgte_sparse_score($3, e.sparse) END AS sparse, '
        '           p.dense_rank, p.sparse_rank '
        '    FROM pool AS p JOIN %8$s AS e USING (%5$s) JOIN %9$s AS t ON %10$s), '
        'top AS ('
        '    SELECT key, body, dense, sparse, %11$s AS fused FROM scored ORDER BY 5 DESC, key LIMIT greatest($4, $8)), '
        'ordered AS (SELECT *, row_number() OVER (ORDER BY fused DESC, key) AS fused_rank FROM top), '
        'reranked AS (%12$s) '
        'SELECT o.key, o.body, (row_number() OVER (ORDER BY r.score DESC NULLS LAST, o.fused_rank))::integer, '
        '       o.dense, o.sparse, o.fused, r.score '
        'FROM ordered AS o LEFT JOIN reranked AS r ON r.idx = o.fused_rank '
        'ORDER BY 3 LIMIT $4',
        mgte._keys(cfg, 'e'), vs, source,
        CASE WHEN sparse_leg
             THEN format('SELECT %s, e.sparsevec OPERATOR(%s.<#>) $2 AS distance FROM %s '
                         'ORDER BY e.sparsevec OPERATOR(%s.<#>) $2 LIMIT $5', mgte._keys(cfg, 'e'), vs, source, vs)
             ELSE format('SELECT %s, NULL::float8 AS distance FROM %s AS e WHERE false', mgte._keys(cfg, 'e'),
                         cfg.embeddings) END,
        keys,
        mgte._key_object(cfg, 'p'),
        cfg.text_column, cfg.embeddings, cfg.tbl, mgte._keys_match(cfg, 't', 'p'),
        fused,
        CASE WHEN rerank_top > 0
             THEN 'SELECT idx, score FROM @extschema@.mgte_rerank($10, '
                  '(SELECT array_agg(body ORDER BY fused_rank) FROM ordered WHERE fused_rank <= $8))'
             ELSE 'SELECT NULL::integer AS idx, NULL::real AS score WHERE false' END);
    RETURN statement;
END
$$;

-- Runs a search statement with what the legs need: enough HNSW candidates for each leg,
-- and (pgvector 0.8 on) iterative index scans so that filters do not starve a leg.
CREATE OR REPLACE FUNCTION mgte._search_run(
    statement text, q_dense vector, q_sparsevec sparsevec, q_sparse jsonb, k integer, candidates integer,
    sparse_weight double precision, rrf_k integer, rerank_top integer, filter jsonb, query text)
RETURNS TABLE (key jsonb, body text, rank integer, dense_score real, sparse_score real, fused_score real,
               rerank_score real)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ef_search text := current_setting('hnsw.ef_search', true);
    iterative text := current_setting('hnsw.iterative_scan', true);
BEGIN
    PERFORM set_config('hnsw.ef_search', greatest(candidates, coalesce(ef_search, '40')::integer)::text, true);
    IF iterative IS NOT NULL AND filter IS NOT NULL THEN
        PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);
    END IF;
    RETURN QUERY EXECUTE statement
        USING q_dense, q_sparsevec, q_sparse, k, candidates, sparse_weight, rrf_k, rerank_top, filter, query;
    PERFORM set_config('hnsw.ef_search', coalesce(ef_search, '40'), true);
    IF iterative IS NOT NULL THEN
        PERFORM set_config('hnsw.iterative_scan', iterative, true);
    END IF;
END
$$;

-- The query's vector, jsonb and sparsevec in one server round trip.
CREATE OR REPLACE FUNCTION mgte._encode_query(cfg mgte.enabled, query text,
    OUT q_dense vector, OUT q_sparse jsonb, OUT q_sparsevec sparsevec)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF query IS NULL THEN
        RAISE EXCEPTION 'the search query must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT e.mgte_embedding::text, e.mgte_sparse, e.mgte_sparsevec INTO q_dense, q_sparse, q_sparsevec
    FROM mgte._encode(ARRAY[query], cfg.dim, cfg.sparse, cfg.vocab_size, NULL, false, cfg.model) AS e;
END
$$;

-- NULL asks the server whether it has a reranker; without one the search says so once.
CREATE OR REPLACE FUNCTION mgte._rerank_top(rerank boolean, rerank_top integer)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF rerank IS NULL THEN
        rerank := @extschema@.mgte_info() -> 'reranker' <> 'null'::jsonb;
        IF NOT rerank THEN
            RAISE NOTICE 'mgte: no reranker loaded; results are ordered by their fused score';
        END IF;
    END IF;
    RETURN CASE WHEN rerank THEN rerank_top ELSE 0 END;
END
$$;

CREATE OR REPLACE FUNCTION mgte_search(
    tbl regclass,
    query text,
    k integer DEFAULT 10,
    candidates integer DEFAULT 50,
    fusion text DEFAULT 'weighted',
    sparse_weight double precision DEFAULT 0.3,
    rrf_k integer DEFAULT 60,
    rerank boolean DEFAULT NULL,
    rerank_top integer DEFAULT 20,
    filter jsonb DEFAULT NULL)
RETURNS TABLE (key jsonb, body text, rank integer, dense_score real, sparse_score real, fused_score real,
               rerank_score real)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg mgte.enabled := mgte._config(tbl);
    q record;
    top integer := mgte._rerank_top(rerank, rerank_top);
BEGIN
    q := mgte._encode_query(cfg, query);
    RETURN QUERY SELECT * FROM mgte._search_run(
        mgte._search_statement(cfg, k, candidates, fusion, sparse_weight, rrf_k, top, filter, cfg.sparse),
        q.q_dense, q.q_sparsevec, q.q_sparse, k, candidates, sparse_weight, rrf_k, top, filter, query);
END
$$;

COMMENT ON FUNCTION mgte_search(regclass, text, integer, integer, text, double precision, integer, boolean, integer, jsonb) IS
'hybrid search of a table set up with mgte_enable: the best k rows (key as jsonb, text) with their dense, sparse, fused (dense + sparse_weight * sparse, or fusion => ''rrf'') and rerank scores; candidates per leg; the cross-encoder reranks the rerank_top best when a reranker is loaded; filter is a jsonb of column: value pairs';

CREATE OR REPLACE FUNCTION mgte_search_vectors(
    tbl regclass,
    query_dense vector,
    query_sparse jsonb DEFAULT NULL,
    query_sparsevec sparsevec DEFAULT NULL,
    k integer DEFAULT 10,
    candidates integer DEFAULT 50,
    fusion text DEFAULT 'weighted',
    sparse_weight double precision DEFAULT 0.3,
    rrf_k integer DEFAULT 60,
    filter jsonb DEFAULT NULL)
RETURNS TABLE (key jsonb, body text, rank integer, dense_score real, sparse_score real, fused_score real,
               rerank_score real)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg mgte.enabled := mgte._config(tbl);
BEGIN
    IF query_dense IS NULL THEN
        RAISE EXCEPTION 'query_dense must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    RETURN QUERY SELECT * FROM mgte._search_run(
        mgte._search_statement(cfg, k, candidates, fusion, sparse_weight, rrf_k, 0, filter,
                               cfg.sparse AND query_sparsevec IS NOT NULL),
        query_dense, query_sparsevec, query_sparse, k, candidates, sparse_weight, rrf_k, 0, filter, NULL);
END
$$;

COMMENT ON FUNCTION mgte_search_vectors(regclass, vector, jsonb, sparsevec, integer, integer, text, double precision, integer, jsonb) IS
'mgte_search with query vectors given instead of a query text: no server call, no rerank';

CREATE OR REPLACE FUNCTION mgte_search_explain(
    tbl regclass,
    query text,
    k integer DEFAULT 10,
    candidates integer DEFAULT 50,
    fusion text DEFAULT 'weighted',
    sparse_weight double precision DEFAULT 0.3,
    rrf_k integer DEFAULT 60,
    rerank boolean DEFAULT NULL,
    rerank_top integer DEFAULT 20,
    filter jsonb DEFAULT NULL)
RETURNS SETOF text
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg mgte.enabled := mgte._config(tbl);
    q record;
    top integer := mgte._rerank_top(rerank, rerank_top);
BEGIN
    q := mgte._encode_query(cfg, query);
    RETURN QUERY EXECUTE 'EXPLAIN '
        || mgte._search_statement(cfg, k, candidates, fusion, sparse_weight, rrf_k, top, filter, cfg.sparse)
        USING q.q_dense, q.q_sparsevec, q.q_sparse, k, candidates, sparse_weight, rrf_k, top, filter, query;
END
$$;

COMMENT ON FUNCTION mgte_search_explain(regclass, text, integer, integer, text, double precision, integer, boolean, integer, jsonb) IS
'the query plan of the statement mgte_search runs with the same arguments (both legs should use their HNSW index)';

-- The views mgte_enable creates read their query text and k from these settings.
CREATE OR REPLACE FUNCTION mgte._setting_query()
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    search_text text := current_setting('mgte.query', true);
BEGIN
    IF search_text IS NULL OR search_text = '' THEN
        RAISE EXCEPTION 'the search views read the query from the setting mgte.query, which is not set'
            USING ERRCODE = 'undefined_object', HINT = 'SET mgte.query = ''what to look for'' first';
    END IF;
    RETURN search_text;
END
$$;

CREATE OR REPLACE FUNCTION mgte._setting_k()
RETURNS integer
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(nullif(current_setting('mgte.k', true), '')::integer, 10)
$$;
