#!/usr/bin/env bash
# Create .venv and install livemig with its test tools. Installs Debian's
# qemu-system-x86 (the QEMU side of the scenario tests) and binutils (to
# rebuild the guest) when missing and we are root.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 binutils >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
