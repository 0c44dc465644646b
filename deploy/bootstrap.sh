#!/usr/bin/env bash
# Installs what fedilake needs into the checkout (idempotent, safe to run twice):
# the main virtual environment (.venv) with the project and its dev tools.
# The stack's jars (Maven Central) and Airflow's own venv are installed on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "fedilake bootstrap: $*" >&2; exit 1; }

PYTHON=${FEDILAKE_PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      PYTHON=$candidate; break
    fi
  done
fi
[ -n "$PYTHON" ] || die "Python 3.11 is required (set FEDILAKE_PYTHON to its path)."
command -v java >/dev/null 2>&1 || ls /usr/lib/jvm/*/bin/java >/dev/null 2>&1 ||
  die "Java 11-21 is required for the local stack (Debian: apt-get install openjdk-17-jdk-headless)."
command -v mvn >/dev/null 2>&1 ||
  die "Maven is required to fetch the stack's jars (Debian: apt-get install maven)."

stamp=.venv/.fedilake-install.sha256
digest=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
  echo "fedilake bootstrap: installing the project into .venv ..." >&2
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[dev]'
  echo "$digest" > "$stamp"
fi
