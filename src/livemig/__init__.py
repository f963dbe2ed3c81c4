"""livemig: a virtual machine monitor in Python built around live migration."""

__version__ = "0.1.0"
# The QEMU version livemig presents in QMP's greeting and query-version: the
# behaviour it mimics is that of this QEMU release (the one in Debian 12).
QEMU_COMPAT_VERSION = (7, 2, 0)


def one_numpy_thread() -> None:
    """Keep numpy's OpenBLAS from starting a worker per core when it loads.

    livemig never calls BLAS, yet each worker spins for ~50 ms of CPU when
    the library starts (measured: a thread that inherits the name of the
    thread that imported numpy, e.g. ``mig/warm-up``), on a machine whose
    cores the vCPU and migration threads need. A value the user set wins."""
    import os

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
