"""The ``tcg`` accelerator, with its engine loaded off the start-up path.

Loading Unicorn (its Python package and the 24 MB libunicorn) is the largest
single cost of a tcg start: about half of exec-to-greeting. No QMP answer
before the guest runs needs the engine: the vCPU state it would report is the
boot state the machine set. So ``TcgAccelerator`` keeps that state, starts
the engine on a loader thread when the machine starts (``preload``), and
anything that needs the engine (``run``, a state read after the load began)
waits for it. The engine itself is ``tcg_unicorn.UnicornVcpu``.
"""

from __future__ import annotations

import copy
import importlib.util
import threading
from typing import TYPE_CHECKING

from ..devices import IoBus
from ..errors import AccelError
from ..memory import GuestRam
from .base import Crashed, RunResult
from .cpustate import CpuState

if TYPE_CHECKING:
    from ..memory.dirty import DirtyTracker
    from .tcg_unicorn import UnicornVcpu


class TcgAccelerator:
    """One Unicorn vCPU, built on first need (module docstring)."""

    name = "tcg"

    def __init__(self, ram: GuestRam, bus: IoBus) -> None:
        # Refuse now, not at the first run, so "accel=tcg:…" can fall through.
        if importlib.util.find_spec("unicorn") is None:
            raise AccelError("tcg: the unicorn package is not installed")
        self._ram = ram
        self._bus = bus
        self._state = CpuState.boot()      # what the engine starts from
        self._lock = threading.Lock()      # engine, kick and loader hand-over
        self._engine: UnicornVcpu | None = None
        self._failure: AccelError | None = None
        self._loader: threading.Thread | None = None
        self._kick_pending = False

    # --- the engine ---------------------------------------------------------
    def preload(self, incoming: bool = False) -> None:
        """Start building the engine in the background (once). ``incoming``:
        build it for both real and protected mode, so that a state arriving
        in either does not build one during the downtime (about 25 ms)."""
        with self._lock:
            if self._loader is None:
                self._loader = threading.Thread(target=self._load, args=(incoming,),
                                                name="tcg/load", daemon=True)
                self._loader.start()

    def wait_ready(self) -> None:
        if self._loader is not None:
            self._loader.join()

    def _load(self, both_modes: bool) -> None:
        try:
            from .tcg_unicorn import UnicornVcpu
            engine = UnicornVcpu(self._ram, self._bus, self._state)
            if both_modes:
                engine.prepare_other_mode()
        except AccelError as err:
            self._failure = err
            return
        except (ImportError, OSError) as err:
            self._failure = AccelError(f"tcg: could not load Unicorn: {err}")
            return
        with self._lock:
            self._engine = engine
            if self._kick_pending:
                engine.kick()

    def _ready(self) -> UnicornVcpu:
        """The engine, waiting for (or starting) its load; AccelError if it failed."""
        self.preload()
        assert self._loader is not None
        self._loader.join()
        if self._engine is None:
            raise self._failure or AccelError("tcg: the engine did not load")
        return self._engine

    def _loading(self) -> bool:
        return self._loader is not None

    # --- running --------------------------------------------------------------
    def arm(self) -> None:
        with self._lock:
            self._kick_pending = False
            if self._engine is not None:
                self._engine.arm()

    def kick(self) -> None:
        with self._lock:
            self._kick_pending = True
            if self._engine is not None:
                self._engine.kick()

    def run(self) -> RunResult:
        engine = self._engine
        if engine is not None:
            return engine.run()
        try:
            engine = self._ready()
        except AccelError as err:
            return Crashed(str(err))
        return engine.run()  # a kick before the load reached it in _load

    # --- state ------------------------------------------------------------------
    def get_state(self) -> CpuState:
        if not self._loading():
            return copy.deepcopy(self._state)
        return self._ready().get_state()

    def set_state(self, state: CpuState) -> None:
        if not self._loading():
            self._state = copy.deepcopy(state)
            return
        self._ready().set_state(state)

    def code_changed(self, address: int, length: int) -> None:
        # Before the engine exists nothing is translated, so nothing is stale.
        if self._loading():
            self._ready().code_changed(address, length)

    def dirty_tracker(self, ram: GuestRam) -> DirtyTracker:
        """Unicorn writes guest RAM from user space: a process-wide tracker."""
        from ..memory.dirty import process_tracker
        return process_tracker(ram)

    def dirty_ring_counts(self) -> list[int] | None:
        return None  # KVM only

    def close(self) -> None:
        # Let a load under way finish first: an interpreter that exits while
        # the loader is inside libunicorn's set-up crashes (SIGSEGV).
        loader = self._loader
        if loader is not None:
            loader.join()
        with self._lock:
            if self._engine is not None:
                self._engine.close()
                self._engine = None
