"""Guest memory: RAM mappings and page-granular dirty tracking."""

from .ram import PAGE_SHIFT, PAGE_SIZE, GuestRam

__all__ = ["PAGE_SHIFT", "PAGE_SIZE", "GuestRam"]
