#!/usr/bin/env bash
# Set up (if needed) and run the livemig demo on the built-in guest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/livemig demo "$@"
