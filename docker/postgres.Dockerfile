# PostgreSQL 17 with pgvector, PL/Python and the mgte extension.
# Build from the repository root:  docker build -f docker/postgres.Dockerfile -t mgte-postgres .
FROM postgres:17-bookworm

COPY extension/ /tmp/mgte/extension/
COPY sql/ /tmp/mgte/sql/
COPY python_udf/ /tmp/mgte/python_udf/

# One layer, so the build-only packages (server-dev pulls in clang and llvm) never reach the image.
# The extension needs no compiler: PGXS only generates and copies files. Holding locales
# keeps autoremove away from it, as pgvector's own Dockerfile does.
RUN set -eux; \
    apt-get update; \
    apt-mark hold locales; \
    apt-get install -y --no-install-recommends \
        postgresql-17-pgvector postgresql-plpython3-17 postgresql-server-dev-17 make; \
    rm -f /tmp/mgte/extension/mgte--*.sql; \
    make -C /tmp/mgte/extension install PG_CONFIG=/usr/lib/postgresql/17/bin/pg_config; \
    apt-get purge -y --auto-remove postgresql-server-dev-17 make; \
    apt-mark unhold locales; \
    rm -rf /var/lib/apt/lists/* /tmp/mgte

# Runs once, when the entrypoint initialises an empty data directory.
COPY docker/initdb/10-mgte.sql /docker-entrypoint-initdb.d/
