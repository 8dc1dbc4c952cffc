-- 0.1.0: the schema for auto-embedding.

CREATE SCHEMA mgte;
COMMENT ON SCHEMA mgte IS 'mgte''s own objects: auto-embedding settings, and for each enabled table its embeddings, queue and failures';
GRANT USAGE ON SCHEMA mgte TO PUBLIC;

-- One row per table with auto-embedding (mgte_enable). The per-table objects it names are
-- created by mgte_enable and dropped by mgte_disable.
CREATE TABLE mgte.enabled (
    tbl regclass PRIMARY KEY,
    text_column name NOT NULL,
    key_columns name[] NOT NULL,
    embeddings regclass NOT NULL,
    queue regclass NOT NULL,
    failed regclass NOT NULL,
    search_view regclass,
    dim integer NOT NULL CHECK (dim > 0),
    vocab_size integer NOT NULL CHECK (vocab_size > 0),
    sparse boolean NOT NULL,
    mode text NOT NULL CHECK (mode IN ('async', 'sync')),
    on_failure text NOT NULL CHECK (on_failure IN ('queue', 'error')),
    sync_timeout_ms integer NOT NULL CHECK (sync_timeout_ms > 0),
    enabled_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE mgte.enabled IS 'tables with auto-embedding, and how (see mgte_enable)';
SELECT pg_catalog.pg_extension_config_dump('mgte.enabled', '');
-- Like pg_class, readable by all: mgte_search needs it, and it holds no row data.
GRANT SELECT ON mgte.enabled TO PUBLIC;
