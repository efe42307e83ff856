#!/usr/bin/env bash
# Lint, then run the whole test suite (slow tests included) in the toolkit venv.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv="$(bash scripts/ensure-venv.sh)" || exit 1
# The app's browser tests drive Debian's Chromium (installed once if missing).
chromium="$(bash scripts/ensure-chromium.sh)" || exit 1
export DISTILL_CHROMIUM="$chromium"
# The venv is shared by every clone; this clone's code comes first for us and our subprocesses.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$venv/bin/ruff" check . || exit 1
# The import layers of docs/architecture.md (contracts in pyproject.toml).
"$venv/bin/lint-imports" --no-cache || exit 1
"$venv/bin/python" -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests (exit 5): treated as success, but check the test paths" >&2
    status=0
fi
exit "$status"
