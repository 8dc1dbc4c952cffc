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


-- --- The search statement -------------------------------------------------------------
--
-- One statement per search, generated for the table (its names, keys and filter columns)
-- from the template in mgte._search_template, and run with ONE parameter, $1: a jsonb
-- object of named values made by mgte._search_parameters. The template reads a value as
-- {name}, which stands for ($1 ->> 'name') cast to the type of the argument of that name of
-- mgte._search_parameters. EXECUTE ... USING hands $1 to the planner as a constant, so each
-- read is folded to a typed constant, as a typed parameter would be, and both legs' ORDER BY
-- can use their HNSW index.

-- The values of a search, by name, checked: everything the statement reads from $1.
-- query is NULL when no rerank needs it; rerank_top is 0 for no rerank.
CREATE OR REPLACE FUNCTION mgte._search_parameters(
    query text, query_dense vector, query_sparse jsonb, query_sparsevec sparsevec, k integer, candidates integer,
    fusion text, sparse_weight double precision, rrf_k integer, rerank_top integer, filter jsonb)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
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
    RETURN jsonb_build_object(
        'query', query, 'query_dense', query_dense::text, 'query_sparse', query_sparse,
        'query_sparsevec', query_sparsevec::text, 'k', k, 'candidates', candidates, 'fusion', fusion,
        'sparse_weight', sparse_weight, 'rrf_k', rrf_k, 'rerank_top', rerank_top, 'filter', filter);
END
$$;

-- {name} -> the typed read of the value `name` from $1, for every argument of
-- mgte._search_parameters: its arguments' names and types are the statement's parameters.
CREATE OR REPLACE FUNCTION mgte._search_reads()
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_object_agg(a.name, format('(($1 ->> %L)::%s)', a.name, pg_catalog.format_type(a.type, NULL)))
    FROM pg_catalog.pg_proc AS p, unnest(p.proargnames, p.proargtypes::oid[]) AS a(name, type)
    WHERE p.oid = 'mgte._search_parameters'::regproc
$$;

-- The filter as conditions on the table's row t: each key a column of the table, each value
-- compared as that column's type. Names are quoted and values are read from the filter
-- parameter (`value_of`, how the statement reads it), so nothing is pasted as SQL.
CREATE OR REPLACE FUNCTION mgte._search_filter(cfg mgte.enabled, filter jsonb, value_of text)
RETURNS text[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    conditions text[] := ARRAY[]::text[];
    column_name text;
    column_type text;
    value jsonb;
BEGIN
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
            conditions := conditions || format('t.%I::jsonb = %s -> %L', column_name, value_of, column_name);
        ELSIF jsonb_typeof(value) IN ('string', 'number', 'boolean') THEN
            conditions := conditions || format('t.%I = (%s ->> %L)::%s', column_name, value_of, column_name, column_type);
        ELSE
            RAISE EXCEPTION 'filter value for % must be a string, number, boolean or null, not %',
                quote_ident(column_name), value USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;
    RETURN conditions;
END
$$;

-- The search statement. Each leg proposes {candidates} rows by its HNSW index (the sparse
-- leg proposes none when it does not run); their pool is scored exactly and fused; the
-- {rerank_top} best by fused score are reranked; the {k} best by rerank score, then fused
-- score, are returned: key, body, rank and the dense, sparse, fused and rerank scores.
-- The fragments {candidate_rows} (the embeddings e, joined to the filtered table t when
-- there is a filter), {sparse_leg}, {fused} and {reranked} are made by
-- mgte._search_statement; {keys}, {keys.x}, {x=y} and {key_object.x} by mgte._render.
CREATE OR REPLACE FUNCTION mgte._search_template()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $template$
SELECT $sql$
WITH dense_leg AS MATERIALIZED (
    SELECT {keys.e}, e.embedding {ip_distance} {query_dense} AS distance
    FROM {candidate_rows}
    ORDER BY e.embedding {ip_distance} {query_dense} LIMIT {candidates}),
sparse_leg AS MATERIALIZED ({sparse_leg}),
ranked AS (
    SELECT {keys}, row_number() OVER (ORDER BY distance, {keys}) AS dense_rank, NULL::bigint AS sparse_rank
    FROM dense_leg
    UNION ALL
    SELECT {keys}, NULL, row_number() OVER (ORDER BY distance, {keys}) FROM sparse_leg),
pool AS (
    SELECT {keys}, min(dense_rank) AS dense_rank, min(sparse_rank) AS sparse_rank FROM ranked GROUP BY {keys}),
scored AS (
    SELECT {key_object.p} AS key, t.{text_column}::text AS body,
           (-(e.embedding {ip_distance} {query_dense}))::real AS dense,
           CASE WHEN {query_sparse} IS NOT NULL THEN @extschema@.mgte_sparse_score({query_sparse}, e.sparse) END AS sparse,
           p.dense_rank, p.sparse_rank
    FROM pool AS p JOIN {embeddings} AS e USING ({keys}) JOIN {tbl} AS t ON {t=p}),
top AS (
    SELECT key, body, dense, sparse, {fused} AS fused
    FROM scored ORDER BY 5 DESC, key LIMIT greatest({k}, {rerank_top})),
ordered AS (SELECT *, row_number() OVER (ORDER BY fused DESC, key) AS fused_rank FROM top),
reranked AS ({reranked})
SELECT o.key, o.body, (row_number() OVER (ORDER BY r.score DESC NULLS LAST, o.fused_rank))::integer,
       o.dense, o.sparse, o.fused, r.score
FROM ordered AS o LEFT JOIN reranked AS r ON r.idx = o.fused_rank
ORDER BY 3 LIMIT {k}
$sql$
$template$;

-- The search statement for a table and the parameters of a search (mgte._search_parameters).
-- The sparse leg runs when the table stores sparse weights and the query has a sparsevec.
CREATE OR REPLACE FUNCTION mgte._search_statement(cfg mgte.enabled, parameters jsonb)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    vars jsonb := mgte._search_reads() || jsonb_build_object(
        'ip_distance', format('OPERATOR(%s.<#>)', mgte._vector_schema()),
        'embeddings', cfg.embeddings::text, 'tbl', cfg.tbl::text, 'text_column', quote_ident(cfg.text_column));
    conditions text[] := mgte._search_filter(cfg, (parameters ->> 'filter')::jsonb, vars ->> 'filter');
BEGIN
    vars := vars || jsonb_build_object('candidate_rows', mgte._render(cfg, CASE
        WHEN cardinality(conditions) > 0 THEN '{embeddings} AS e JOIN {tbl} AS t ON {t=e} WHERE {conditions}'
        ELSE '{embeddings} AS e' END, vars || jsonb_build_object('conditions', array_to_string(conditions, ' AND '))));
    vars := vars || jsonb_build_object(
        'sparse_leg', mgte._render(cfg, CASE
            WHEN cfg.sparse AND parameters ->> 'query_sparsevec' IS NOT NULL
            THEN 'SELECT {keys.e}, e.sparsevec {ip_distance} {query_sparsevec} AS distance FROM {candidate_rows} '
                 'ORDER BY e.sparsevec {ip_distance} {query_sparsevec} LIMIT {candidates}'
            ELSE 'SELECT {keys.e}, NULL::float8 AS distance FROM {embeddings} AS e WHERE false' END, vars),
        'fused', mgte._render(cfg, CASE parameters ->> 'fusion'
            WHEN 'weighted' THEN '(dense + {sparse_weight} * coalesce(sparse, 0))::real'
            ELSE '(coalesce(1.0 / ({rrf_k} + dense_rank), 0) + coalesce(1.0 / ({rrf_k} + sparse_rank), 0))::real'
            END, vars),
        'reranked', mgte._render(cfg, CASE
            WHEN (parameters ->> 'rerank_top')::integer > 0
            THEN 'SELECT idx, score FROM @extschema@.mgte_rerank({query}, '
                 '(SELECT array_agg(body ORDER BY fused_rank) FROM ordered WHERE fused_rank <= {rerank_top}))'
            ELSE 'SELECT NULL::integer AS idx, NULL::real AS score WHERE false' END, vars));
    RETURN mgte._render(cfg, mgte._search_template(), vars);
END
$$;

-- What the legs need while a search statement runs (or is explained): enough HNSW
-- candidates for each leg, and (pgvector 0.8 on) iterative index scans so that filters do not
-- starve a leg. Returns the settings as they were, for mgte._search_restore_settings.
CREATE OR REPLACE FUNCTION mgte._search_settings(parameters jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    saved jsonb := jsonb_build_object('ef_search', current_setting('hnsw.ef_search', true),
                                      'iterative_scan', current_setting('hnsw.iterative_scan', true));
BEGIN
    PERFORM set_config('hnsw.ef_search', greatest((parameters ->> 'candidates')::integer,
                                                  coalesce(saved ->> 'ef_search', '40')::integer)::text, true);
    IF saved ->> 'iterative_scan' IS NOT NULL AND parameters ->> 'filter' IS NOT NULL THEN
        PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);
    END IF;
    RETURN saved;
END
$$;

CREATE OR REPLACE FUNCTION mgte._search_restore_settings(saved jsonb)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM set_config('hnsw.ef_search', coalesce(saved ->> 'ef_search', '40'), true);
    IF saved ->> 'iterative_scan' IS NOT NULL THEN
        PERFORM set_config('hnsw.iterative_scan', saved ->> 'iterative_scan', true);
    END IF;
END
$$;

-- Runs a search statement with its parameters.
CREATE OR REPLACE FUNCTION mgte._search_run(statement text, parameters jsonb)
RETURNS TABLE (key jsonb, body text, rank integer, dense_score real, sparse_score real, fused_score real,
               rerank_score real)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    saved jsonb := mgte._search_settings(parameters);
BEGIN
    RETURN QUERY EXECUTE statement USING parameters;
    PERFORM mgte._search_restore_settings(saved);
END
$$;

-- The plan of a search statement, as mgte._search_run would run it.
CREATE OR REPLACE FUNCTION mgte._search_plan(statement text, parameters jsonb)
RETURNS SETOF text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    saved jsonb := mgte._search_settings(parameters);
BEGIN
    RETURN QUERY EXECUTE 'EXPLAIN ' || statement USING parameters;
    PERFORM mgte._search_restore_settings(saved);
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

-- What mgte_search runs and mgte_search_explain explains: the statement for the table and
-- its parameters, with the query encoded and the rerank decided.
CREATE OR REPLACE FUNCTION mgte._search_prepare(
    tbl regclass, query text, k integer, candidates integer, fusion text, sparse_weight double precision,
    rrf_k integer, rerank boolean, rerank_top integer, filter jsonb, OUT statement text, OUT parameters jsonb)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg mgte.enabled := mgte._config(tbl);
    top integer := mgte._rerank_top(rerank, rerank_top);
    q record := mgte._encode_query(cfg, query);
BEGIN
    parameters := mgte._search_parameters(
        query => query, query_dense => q.q_dense, query_sparse => q.q_sparse, query_sparsevec => q.q_sparsevec,
        k => k, candidates => candidates, fusion => fusion, sparse_weight => sparse_weight, rrf_k => rrf_k,
        rerank_top => top, filter => filter);
    statement := mgte._search_statement(cfg, parameters);
END
$$;

-- --- The search functions ---------------------------------------------------------------

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
    prepared record := mgte._search_prepare(tbl, query, k, candidates, fusion, sparse_weight, rrf_k, rerank,
                                          rerank_top, filter);
BEGIN
    RETURN QUERY SELECT * FROM mgte._search_run(prepared.statement, prepared.parameters);
END
$$;

COMMENT ON FUNCTION mgte_search(regclass, text, integer, integer, text, double precision, integer, boolean, integer, jsonb) IS
'hybrid search of a table set up with mgte_enable: the best k rows (key as jsonb, text) with their dense, sparse, fused (dense + sparse_weight * sparse, or fusion => ''rrf'') and rerank scores; candidates per leg; the cross-encoder reranks the rerank_top best when a reranker is loaded; filter is a jsonb of column: value pairs';

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
    prepared record := mgte._search_prepare(tbl, query, k, candidates, fusion, sparse_weight, rrf_k, rerank,
                                          rerank_top, filter);
BEGIN
    RETURN QUERY SELECT * FROM mgte._search_plan(prepared.statement, prepared.parameters);
END
$$;

COMMENT ON FUNCTION mgte_search_explain(regclass, text, integer, integer, text, double precision, integer, boolean, integer, jsonb) IS
'the query plan of the statement mgte_search runs with the same arguments (both legs should use their HNSW index)';

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
    parameters jsonb;
BEGIN
    IF query_dense IS NULL THEN
        RAISE EXCEPTION 'query_dense must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    parameters := mgte._search_parameters(
        query => NULL, query_dense => query_dense, query_sparse => query_sparse, query_sparsevec => query_sparsevec,
        k => k, candidates => candidates, fusion => fusion, sparse_weight => sparse_weight, rrf_k => rrf_k,
        rerank_top => 0, filter => filter);
    RETURN QUERY SELECT * FROM mgte._search_run(mgte._search_statement(cfg, parameters), parameters);
END
$$;

COMMENT ON FUNCTION mgte_search_vectors(regclass, vector, jsonb, sparsevec, integer, integer, text, double precision, integer, jsonb) IS
'mgte_search with query vectors given instead of a query text: no server call, no rerank';


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
