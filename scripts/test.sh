#!/usr/bin/env bash
# Run the whole test suite from a fresh clone: creates .venv, installs the package with
# its test dependencies, installs Debian's prometheus package when it is missing (the
# dashboard tests query a real Prometheus server), then runs pytest with any arguments
# given to this script.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "Installing Debian's prometheus package (needed by the dashboard tests)..."
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    else
        echo "error: prometheus and promtool are missing; install Debian's prometheus package (apt-get install prometheus) and run again" >&2
        exit 1
    fi
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"

exec .venv/bin/python -m pytest "$@"
