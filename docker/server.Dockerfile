# The mgte model server: one process that serves the models to every PostgreSQL backend over
# a Unix socket; compose.yaml runs `mgte worker` from this image too. Installed by
# `scripts/setup.sh --server` into /opt/mgte/.venv, as on a host. Build from the repository root:
#   docker build -f docker/server.Dockerfile -t mgte-server .
# TORCH_INDEX_URL (optional): the package index torch comes from, e.g. PyTorch's own index of
# CPU-only wheels (far smaller than the CUDA build the default index gives), or of CUDA wheels
# for an NVIDIA GPU:  add --build-arg TORCH_INDEX_URL=<that index>
FROM debian:bookworm-slim

ARG TORCH_INDEX_URL=
# The group that may connect to the socket. 999 is the postgres group (and user) of the official
# postgres image, so its backends are members of this group by number across the two containers.
ARG SOCKET_GID=999

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

COPY pyproject.toml README.md /opt/mgte/
COPY scripts/setup.sh /opt/mgte/scripts/
COPY mgte/ /opt/mgte/mgte/
COPY python_udf/ /opt/mgte/python_udf/
RUN MGTE_TORCH_INDEX_URL="$TORCH_INDEX_URL" /opt/mgte/scripts/setup.sh --server \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/mgte/.venv/bin:$PATH

# /run/mgte and /models belong to mgte, so a fresh named volume mounted there inherits that owner
# (Docker copies a directory's ownership into an empty named volume on its first mount).
RUN groupadd --gid "$SOCKET_GID" mgte-clients \
 && useradd --uid 10001 --gid mgte-clients --home-dir /models --no-create-home \
        --shell /usr/sbin/nologin mgte \
 && mkdir -p /run/mgte /models \
 && chown mgte:mgte-clients /run/mgte /models \
 && chmod 0750 /run/mgte

# Hub models are cached in /models/hub, the tiny model in /models/cache.
ENV MGTE_SOCKET=/run/mgte/mgte.sock \
    MGTE_SOCKET_GROUP=mgte-clients \
    HF_HOME=/models \
    XDG_CACHE_HOME=/models/cache
VOLUME /models
USER mgte

# Healthy once the models are loaded and the socket answers; the first start may download them.
HEALTHCHECK --interval=15s --timeout=20s --start-period=10m --retries=3 \
    CMD mgte info --socket /run/mgte/mgte.sock > /dev/null || exit 1
ENTRYPOINT ["mgte", "serve"]
