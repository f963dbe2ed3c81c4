#!/usr/bin/env bash
# Set up (if needed), lint, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks
# Two workers (pytest-xdist): the scenario tests mostly wait on guests and
# sockets, and the kvm reference scenarios spend ~50 s each in the nested
# kernel; two at a time halves the suite (996 -> 538 s measured here) with
# each test's own duration unchanged within ~10%.
exec .venv/bin/python -m pytest -n 2 --dist worksteal "$@"
