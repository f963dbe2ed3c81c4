"""livemig: a virtual machine monitor in Python built around live migration."""

__version__ = "0.1.0"
# The QEMU version livemig presents in QMP's greeting and query-version: the
# behaviour it mimics is that of this QEMU release (the one in Debian 12).
QEMU_COMPAT_VERSION = (7, 2, 0)
