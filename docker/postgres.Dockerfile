# PostgreSQL 17 with pgvector, PL/Python and the mgte extension, installed by
# `scripts/setup.sh --postgres`: the same steps as on a host.
# Build from the repository root:  docker build -f docker/postgres.Dockerfile -t mgte-postgres .
FROM postgres:17-bookworm

COPY scripts/setup.sh /tmp/mgte/scripts/
COPY extension/ /tmp/mgte/extension/
COPY migrations/ /tmp/mgte/migrations/
COPY sql/ /tmp/mgte/sql/
COPY python_udf/ /tmp/mgte/python_udf/

# One layer, so that the build-only packages (server-dev pulls in clang and llvm) never reach
# the image: the extension needs no compiler, PGXS only generates and copies files. Holding
# locales keeps autoremove away from it, as pgvector's own Dockerfile does. The install scripts
# (extension/mgte--*.sql) are made again from these sources, never taken from a checkout.
RUN set -eux; \
    apt-mark hold locales; \
    rm -f /tmp/mgte/extension/mgte--*.sql; \
    /tmp/mgte/scripts/setup.sh --postgres; \
    apt-get purge -y --auto-remove postgresql-server-dev-17 make gcc; \
    apt-mark unhold locales; \
    rm -rf /var/lib/apt/lists/* /tmp/mgte

# Run once, in name order, when the entrypoint initialises an empty data directory: the
# extension, then the worker's login role.
COPY docker/initdb/ /docker-entrypoint-initdb.d/

# The entrypoint runs as postgres from the start (a fresh volume takes the image's writable
# data directory), rather than as root switching to it.
USER postgres
HEALTHCHECK --interval=10s --timeout=5s --retries=5 CMD pg_isready --quiet || exit 1
