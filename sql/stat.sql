-- mgte_stat: what this database's backends saw of the model server, from PostgreSQL's own
-- function statistics (pg_stat_user_functions), which count calls and time per database when
-- track_functions is 'pl' or 'all', in memory, written by nobody.
--
-- Those statistics count a call only when it returns, so a failed call is not in them. The
-- model functions count their failures themselves, without a write: on a failed request to
-- the server they call their error counter below (mgte_udf.plpython._count_error), an empty
-- PL/pgSQL function, and its calls are the failures. Anyone may call a counter; a call by hand
-- only inflates a statistic.

CREATE OR REPLACE FUNCTION mgte._errors_embed() RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$BEGIN END$$;
COMMENT ON FUNCTION mgte._errors_embed() IS 'called once per failed mgte_embed call: mgte_stat counts these calls';

CREATE OR REPLACE FUNCTION mgte._errors_sparse() RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$BEGIN END$$;
COMMENT ON FUNCTION mgte._errors_sparse() IS 'called once per failed mgte_sparse call: mgte_stat counts these calls';

CREATE OR REPLACE FUNCTION mgte._errors_sparsevec() RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$BEGIN END$$;
COMMENT ON FUNCTION mgte._errors_sparsevec() IS
'called once per failed mgte_sparsevec call: mgte_stat counts these calls';

CREATE OR REPLACE FUNCTION mgte._errors_rerank() RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$BEGIN END$$;
COMMENT ON FUNCTION mgte._errors_rerank() IS 'called once per failed mgte_rerank call: mgte_stat counts these calls';

CREATE OR REPLACE FUNCTION mgte._errors_info() RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$BEGIN END$$;
COMMENT ON FUNCTION mgte._errors_info() IS 'called once per failed mgte_info call: mgte_stat counts these calls';

CREATE OR REPLACE FUNCTION mgte._errors_encode() RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$BEGIN END$$;
COMMENT ON FUNCTION mgte._errors_encode() IS
'called once per failed request of synchronous auto-embedding (mgte._encode), including those that fell back to the queue: mgte_stat counts these calls';

-- One row per function, its overloads together. self_time excludes the functions a function
-- calls, so for the PL/Python ones it is the time spent on the server's answer (mostly
-- waiting for it); mgte_search's calls the model functions, whose rows hold their share.
-- CREATE OR REPLACE VIEW can only add columns at the end: a release that changes the others
-- must DROP VIEW mgte_stat in its migration.
CREATE OR REPLACE VIEW mgte_stat AS
SELECT f.funcname,
       coalesce(sum(pg_stat_get_function_calls(p.oid)), 0)::bigint AS calls,
       CASE WHEN f.errors IS NOT NULL THEN coalesce(pg_stat_get_function_calls(f.errors), 0) END AS errors,
       coalesce(sum(pg_stat_get_function_total_time(p.oid)), 0)::double precision AS total_time,
       coalesce(sum(pg_stat_get_function_self_time(p.oid)), 0)::double precision AS self_time,
       current_setting('track_functions') AS track_functions
FROM (VALUES
    (1, 'mgte_embed', ARRAY['mgte_embed(text,integer)'::regprocedure, 'mgte_embed(text[],integer)'::regprocedure],
     'mgte._errors_embed()'::regprocedure),
    (2, 'mgte_sparse', ARRAY['mgte_sparse(text)'::regprocedure], 'mgte._errors_sparse()'::regprocedure),
    (3, 'mgte_sparsevec', ARRAY['mgte_sparsevec(text)'::regprocedure], 'mgte._errors_sparsevec()'::regprocedure),
    (4, 'mgte_rerank', ARRAY['mgte_rerank(text,text,boolean)'::regprocedure,
                             'mgte_rerank(text,text[],boolean)'::regprocedure], 'mgte._errors_rerank()'::regprocedure),
    (5, 'mgte_info', ARRAY['mgte_info()'::regprocedure], 'mgte._errors_info()'::regprocedure),
    (6, 'mgte._encode', ARRAY['mgte._encode(text[],integer,boolean,integer,integer,boolean,text)'::regprocedure],
     'mgte._errors_encode()'::regprocedure),
    (7, 'mgte_search',
     ARRAY['mgte_search(regclass,text,integer,integer,text,double precision,integer,boolean,integer,jsonb)'::regprocedure],
     NULL)
) AS f(n, funcname, functions, errors)
CROSS JOIN LATERAL unnest(f.functions) AS p(oid)
GROUP BY f.n, f.funcname, f.errors
ORDER BY f.n;

GRANT SELECT ON mgte_stat TO PUBLIC;

COMMENT ON VIEW mgte_stat IS
'the model functions as this database''s backends saw them, pg_stat_user_functions-style: calls that returned, errors (failed requests to the server), total_time and self_time in ms (self_time of a model function is mostly time waiting on the server); counted only while track_functions is ''pl'' or ''all'' (its value in this session is the last column), and with the delay of PostgreSQL''s statistics';
