"""Thin bindings for userfaultfd (missing and write-protect modes) and PAGEMAP_SCAN."""

from .fd import Userfaultfd, probe_missing, probe_wp_async

__all__ = ["Userfaultfd", "probe_missing", "probe_wp_async"]
