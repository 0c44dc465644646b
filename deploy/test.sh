#!/usr/bin/env bash
# The whole suite: lint and types, then unit, integration and e2e tests. The integration and
# e2e tiers start the real local stack themselves (and stop what they started). Extra
# arguments go to pytest, e.g. `deploy/test.sh -k lake`.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/bootstrap.sh
echo "== lint" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check --quiet .
.venv/bin/mypy
echo "== stack jars (Maven Central, first run only)" >&2
# Before the tests, so no test's timeout is spent on downloads.
.venv/bin/fedilake stack fetch
echo "== tests (unit, integration, e2e)" >&2
exec .venv/bin/python -m pytest tests/unit tests/integration tests/e2e "$@"
