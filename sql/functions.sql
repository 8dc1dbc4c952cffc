-- The model functions. Each PL/Python body is one import and one call into mgte_udf.plpython;
-- "#MGTE_IMPORT" is replaced by extension/Makefile with the import of this release's client.
-- STABLE, never IMMUTABLE: the output changes when the served model changes, and STABLE still
-- lets `ORDER BY embedding <=> mgte_embed('query')` use an index.

CREATE OR REPLACE FUNCTION mgte_embed(input text, dim integer DEFAULT NULL)
RETURNS vector
LANGUAGE plpython3u STABLE PARALLEL SAFE COST 1000 SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $python$
#MGTE_IMPORT
return mgte.embed(plpy, GD, input, dim)
$python$;

COMMENT ON FUNCTION mgte_embed(text, integer) IS
'dense mGTE embedding of a text, L2-normalised; dim keeps the first dim values (Matryoshka, 1 to the model''s size); NULL gives NULL';

CREATE OR REPLACE FUNCTION mgte_embed(inputs text[], dim integer DEFAULT NULL)
RETURNS vector[]
LANGUAGE plpython3u STABLE PARALLEL SAFE COST 1000 SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $python$
#MGTE_IMPORT
return mgte.embed_many(plpy, GD, inputs, dim)
$python$;

COMMENT ON FUNCTION mgte_embed(text[], integer) IS
'dense mGTE embeddings of an array of texts in one server round trip; NULL elements give NULL elements';

CREATE OR REPLACE FUNCTION mgte_sparse(input text)
RETURNS jsonb
LANGUAGE plpython3u STABLE STRICT PARALLEL SAFE COST 1000 SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $python$
#MGTE_IMPORT
return mgte.sparse(plpy, GD, input)
$python$;

COMMENT ON FUNCTION mgte_sparse(text) IS
'mGTE lexical weights of a text as {"token": weight}, the official output format; score two with the sum of products over shared tokens';

CREATE OR REPLACE FUNCTION mgte_rerank(query text, document text, sigmoid boolean DEFAULT false)
RETURNS real
LANGUAGE plpython3u STABLE STRICT PARALLEL SAFE COST 1000 SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $python$
#MGTE_IMPORT
return mgte.rerank(plpy, GD, query, document, sigmoid)
$python$;

COMMENT ON FUNCTION mgte_rerank(text, text, boolean) IS
'cross-encoder relevance of a document to a query: the raw logit (higher is more relevant), or its sigmoid in 0..1 when sigmoid is true';

CREATE OR REPLACE FUNCTION mgte_rerank(query text, documents text[], sigmoid boolean DEFAULT false)
RETURNS TABLE (idx integer, score real)
LANGUAGE plpython3u STABLE STRICT PARALLEL SAFE COST 1000 ROWS 100 SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $python$
#MGTE_IMPORT
return mgte.rerank_many(plpy, GD, query, documents, sigmoid)
$python$;

COMMENT ON FUNCTION mgte_rerank(text, text[], boolean) IS
'cross-encoder scores of many documents in one server round trip: (array position, score), best first; NULL documents come last with a NULL score';

CREATE OR REPLACE FUNCTION mgte_info()
RETURNS jsonb
LANGUAGE plpython3u VOLATILE PARALLEL SAFE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $python$
#MGTE_IMPORT
return mgte.info(plpy, GD)
$python$;

COMMENT ON FUNCTION mgte_info() IS
'the mgte server this session uses: socket, models, limits, request and batching counters';
