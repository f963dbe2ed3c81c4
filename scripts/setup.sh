#!/usr/bin/env bash
# Create .venv and install livemig with its test tools. Installs Debian's
# qemu-system-x86 (the QEMU side of the scenario tests), binutils (to
# rebuild the guest) and libvirt (the libvirt tests) when missing and we
# are root.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 binutils >/dev/null
fi
if [ "$(id -u)" = 0 ] && ! command -v libvirtd >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libvirt-daemon-system \
        libvirt-clients >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
# Byte-compile the sources: an editable install runs them from src/, and with
# PYTHONDONTWRITEBYTECODE set (as on these machines) every start would
# otherwise compile each module again, a third of livemig's start-up.
.venv/bin/python -m compileall -q src >/dev/null
