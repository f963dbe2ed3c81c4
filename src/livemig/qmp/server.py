"""QMP: greeting, capabilities negotiation, dispatch, events.

One :class:`QmpSession` per connected client, each on its own thread.
Commands from all sessions run one at a time (``dispatch_lock``), the way
QEMU runs them under its big lock; events go to every negotiated session.

Nothing a client does (or fails to do) blocks anyone else: every reply and
event is put in the session's bounded outbox and written by the session's
own writer thread. A client that falls ``OUTBOX_LIMIT`` messages behind
(one that never reads, say) is disconnected, so a command, the machine or
a migration job never waits for a slow client.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import Any

from ..chardev import Stream
from ..errors import LivemigError, QmpError
from ..logs import get_logger
from ..machine import Machine
from ..machine.inventory import Inventory
from ..migration import MigrationManager
from ..objects import ObjectRegistry
from .context import QmpContext
from .events import EVENTS
from .jsonstream import JsonSplitter, ParseError
from .registry import COMMANDS, call
from .schema import check_arguments
from .version import version_info

log = get_logger(__name__)

OUTBOX_LIMIT = 4096  # messages a client may lag behind before it is disconnected

_ALLOWED_KEYS = {"execute", "arguments", "id", "control"}


def _line(message: dict[str, Any]) -> bytes:
    return (json.dumps(message) + "\r\n").encode()


class QmpSession:
    """One client connection: a reader (this thread) and a writer thread."""

    def __init__(self, server: QmpServer, stream: Stream) -> None:
        self.server = server
        self.stream = stream
        self.negotiated = False
        self._outbox: queue.Queue[bytes | None] = queue.Queue(OUTBOX_LIMIT)
        self._dropped = threading.Event()
        self._written = threading.Condition()  # notified as the writer empties the outbox

    def send(self, message: dict[str, Any]) -> bool:
        """Queue ``message`` for the client; never blocks. False once the
        client is gone or has been disconnected for falling behind."""
        if self._dropped.is_set():
            return False
        try:
            self._outbox.put_nowait(_line(message))
            return True
        except queue.Full:
            log.warning("QMP client %s fell %d messages behind: disconnecting it",
                        self.stream.label, OUTBOX_LIMIT)
            self._drop()
            return False

    def _drop(self) -> None:
        self._dropped.set()
        self.stream.shutdown()  # the reader and the writer both end; run() closes

    def _write_loop(self) -> None:
        try:
            while True:
                data = self._outbox.get()
                if data is None or not self.stream.write(data):
                    return
                with self._written:
                    self._outbox.task_done()
                    self._written.notify_all()
        finally:
            self._dropped.set()
            with self._written:
                self._written.notify_all()

    def flush(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until everything queued has been written."""
        with self._written:
            self._written.wait_for(
                lambda: self._dropped.is_set() or not self._outbox.unfinished_tasks, timeout)

    def run(self) -> None:
        # The greeting is written here, before the writer thread exists: no
        # other message can come first, and it saves a thread hand-off at
        # start-up (while the tcg engine loads on another thread).
        greeting = {"QMP": {"version": version_info(), "capabilities": ["oob"]}}
        if not self.stream.write(_line(greeting)):
            return
        writer = threading.Thread(target=self._write_loop, name="qmp-writer", daemon=True)
        writer.start()
        if self.server.migration is not None:
            # Start-up is over once a client has its greeting and the main
            # thread has let go of the dispatch lock (System.run): now load
            # what a first migrate would otherwise pay for (manager.warm_up).
            with self.server.dispatch_lock:
                pass
            self.server.migration.warm_up()
        splitter = JsonSplitter()
        self.server.add_session(self)
        try:
            while not self._dropped.is_set():
                data = self.stream.read()
                if not data:
                    return
                for value in splitter.feed(data):
                    # The answer is queued before the lock is let go, so that
                    # whoever takes it next (the main thread after ``quit``)
                    # finds it queued and can flush it.
                    with self.server.dispatch_lock:
                        response = self.handle(value)
                        sent = response is None or self.send(response)
                    if not sent:
                        return
        finally:
            self.server.remove_session(self)
            self._dropped.set()
            try:
                self._outbox.put_nowait(None)  # let the writer finish what is queued
            except queue.Full:
                self.stream.shutdown()
            writer.join(5)
            if writer.is_alive():  # a peer that reads nothing: stop writing to it
                self.stream.shutdown()
                writer.join(5)

    def handle(self, value: Any) -> dict[str, Any] | None:
        if isinstance(value, ParseError):
            return _error(None, QmpError(value.message))
        if not isinstance(value, dict):
            return _error(None, QmpError("QMP input must be a JSON object"))
        has_id = "id" in value
        msg_id = value.get("id")
        try:
            name, args = _unpack(value)
            with self.server.dispatch_lock:
                result = self.server.dispatch(self, name, args)
        except QmpError as err:
            return _error(msg_id, err, has_id)
        except LivemigError as err:
            return _error(msg_id, QmpError(str(err)), has_id)
        except Exception as err:  # a bug must not take the monitor down
            log.exception("QMP command failed unexpectedly")
            return _error(msg_id, QmpError(f"internal error: {err}"), has_id)
        response: dict[str, Any] = {"return": result if result is not None else {}}
        if has_id:
            response = {"id": msg_id, **response}
        return response


def _unpack(value: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    for key in value:
        if key not in _ALLOWED_KEYS:
            raise QmpError(f"QMP input member '{key}' is unexpected")
    if "execute" not in value:
        raise QmpError("QMP input lacks member 'execute'")
    name = value["execute"]
    if not isinstance(name, str):
        raise QmpError("QMP input member 'execute' must be a string")
    args = value.get("arguments", {})
    if not isinstance(args, dict):
        raise QmpError("QMP input member 'arguments' must be an object")
    return name, args


def _error(msg_id: Any, err: QmpError, has_id: bool | None = None) -> dict[str, Any]:
    body = {"error": {"class": err.error_class, "desc": err.desc}}
    if has_id or (has_id is None and msg_id is not None):
        return {"id": msg_id, **body}
    return body


class QmpServer:
    """All QMP sessions of one VM process, and the event broadcaster."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.migration: MigrationManager | None = None
        self.objects: ObjectRegistry | None = None
        self.inventory: Inventory | None = None
        self.dispatch_lock = threading.RLock()
        self._sessions: list[QmpSession] = []
        self._lock = threading.Lock()

    def attach(self, stream: Stream) -> None:
        """Serve one connection to its end (called on the connection's thread)."""
        QmpSession(self, stream).run()

    def add_session(self, session: QmpSession) -> None:
        with self._lock:
            self._sessions.append(session)

    def remove_session(self, session: QmpSession) -> None:
        with self._lock:
            if session in self._sessions:
                self._sessions.remove(session)

    def dispatch(self, session: QmpSession, name: str, args: dict[str, Any]) -> Any:
        if name == "qmp_capabilities" and not session.negotiated:
            check_arguments({"*enable": ["str"]}, args)
            session.negotiated = True
            return {}
        if not session.negotiated:
            raise QmpError("Expecting capabilities negotiation with 'qmp_capabilities'",
                           "CommandNotFound")
        if name == "qmp_capabilities":
            raise QmpError("Capabilities negotiation is already complete, command ignored",
                           "CommandNotFound")
        cmd = COMMANDS.get(name)
        if cmd is None:
            raise QmpError(f"The command {name} has not been found", "CommandNotFound")
        checked = check_arguments(cmd.schema, args)
        ctx = QmpContext(self.machine, session, self.migration, self.objects, self.inventory)
        return call(cmd, ctx, checked)

    def flush(self, timeout: float = 1.0) -> None:
        """Let every session write what it has queued (before the process ends)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.flush(max(0.0, deadline - time.monotonic()))

    def emit(self, event: str, data: dict[str, Any] | None = None) -> None:
        """Send an event to every negotiated session, with QEMU's timestamp.
        Only events in the table of :mod:`.events` may be sent."""
        if event not in EVENTS:
            raise RuntimeError(f"QMP event {event} is not in the event table")
        now = time.time()
        message: dict[str, Any] = {
            "timestamp": {"seconds": int(now), "microseconds": int(now % 1 * 1_000_000)},
            "event": event,
        }
        if data is not None:
            message["data"] = data
        with self._lock:
            sessions = [s for s in self._sessions if s.negotiated]
        for session in sessions:
            session.send(message)
