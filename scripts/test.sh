#!/usr/bin/env bash
# Runs the whole test suite on this machine: installs whatever is missing (scripts/setup.sh),
# checks style and types, then runs pytest against a real PostgreSQL and real mgte servers.
# Arguments go to pytest, e.g. scripts/test.sh -k sql -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
