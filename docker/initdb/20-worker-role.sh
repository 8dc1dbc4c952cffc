#!/usr/bin/env bash
# Run once by the postgres image's entrypoint, after 10-mgte.sql, on a fresh data directory:
# the login role compose.yaml's worker connects as. It is a member of mgte_worker and has no
# other right (README.md, "Security model"); its password is MGTE_WORKER_PASSWORD.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password --username "${POSTGRES_USER:-postgres}" \
    --dbname "${POSTGRES_DB:-${POSTGRES_USER:-postgres}}" \
    --set password="${MGTE_WORKER_PASSWORD:?set MGTE_WORKER_PASSWORD, the password of the worker role}" <<'SQL'
CREATE ROLE embedder LOGIN PASSWORD :'password' IN ROLE mgte_worker;
SQL
