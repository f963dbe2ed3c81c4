"""QMP bad input on a raw socket: QEMU's answers define what is right."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from livemig.lab import Vm, VmLauncher, VmmKind


class RawQmp:
    """Speaks QMP by hand so that malformed input can be sent."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")
        self.greeting = self.receive()

    def receive(self) -> dict:  # type: ignore[type-arg]
        while True:
            message = json.loads(self.file.readline())
            if "event" not in message:
                return message

    def send(self, text: str) -> dict:  # type: ignore[type-arg]
        self.sock.sendall(text.encode() + b"\n")
        return self.receive()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _start_with_raw(lab: VmLauncher, kind: VmmKind) -> tuple[Vm, RawQmp]:
    """A VM with a second QMP socket for hand-made input.

    QEMU serves one client per QMP socket, and the lab's client holds the first.
    """
    second = lab.workdir / "second.qmp"
    vm = lab.start(kind, "guest", extra=["-qmp", f"unix:{second},server=on,wait=off"])
    return vm, RawQmp(second)


def _error_class(answer: dict) -> str:  # type: ignore[type-arg]
    assert "error" in answer, answer
    return str(answer["error"]["class"])


def test_negotiation_and_ids(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    vm, raw = _start_with_raw(lab, vmm_any_accel)
    assert set(raw.greeting["QMP"]) == {"version", "capabilities"}
    assert set(raw.greeting["QMP"]["version"]["qemu"]) == {"major", "minor", "micro"}

    before = raw.send('{"execute": "query-status", "id": 5}')
    assert before["id"] == 5
    assert _error_class(before) == "CommandNotFound"
    assert "qmp_capabilities" in before["error"]["desc"]

    assert raw.send('{"execute": "qmp_capabilities"}') == {"return": {}}
    again = raw.send('{"execute": "qmp_capabilities"}')
    assert _error_class(again) == "CommandNotFound"
    answer = raw.send('{"execute": "query-name", "id": {"nested": [1, "x"]}}')
    assert answer == {"id": {"nested": [1, "x"]}, "return": {"name": "guest"}}
    # Several clients at once: the lab's session still works too.
    assert vm.status() == "running"
    raw.close()


BAD_INPUT = [
    ("malformed json", "{bad json}", "GenericError", "JSON parse error"),
    ("array", "[1, 2]", "GenericError", "QMP input must be a JSON object"),
    ("number", "123", "GenericError", "QMP input must be a JSON object"),
    ("string", '"str"', "GenericError", "QMP input must be a JSON object"),
    ("no execute", '{"exec": "query-status"}', "GenericError", "'exec' is unexpected"),
    ("execute not a string", '{"execute": 1}', "GenericError", "must be a string"),
    ("arguments not an object", '{"execute": "query-status", "arguments": []}',
     "GenericError", "'arguments' must be an object"),
    ("unknown command", '{"execute": "no-such-command"}', "CommandNotFound",
     "The command no-such-command has not been found"),
    ("missing argument", '{"execute": "pmemsave", "arguments": {"val": 0, "size": 1}}',
     "GenericError", "Parameter 'filename' is missing"),
    ("extra argument", '{"execute": "query-status", "arguments": {"bogus": 1}}',
     "GenericError", "Parameter 'bogus' is unexpected"),
    ("wrong type", '{"execute": "pmemsave", "arguments": '
     '{"val": "zero", "size": 1, "filename": "/dev/null"}}',
     "GenericError", "Invalid parameter type for 'val', expected: integer"),
    ("single quotes are accepted by QEMU's parser", "{'execute': 'no-such'}",
     "CommandNotFound", "no-such"),
]


@pytest.mark.parametrize(("text", "error_class", "desc"), [b[1:] for b in BAD_INPUT],
                         ids=[b[0] for b in BAD_INPUT])
def test_bad_input_gets_qemus_error(vmm_any_accel: VmmKind, lab: VmLauncher,
                                    text: str, error_class: str, desc: str) -> None:
    vm, raw = _start_with_raw(lab, vmm_any_accel)
    raw.send('{"execute": "qmp_capabilities"}')
    answer = raw.send(text)
    assert _error_class(answer) == error_class
    assert desc in answer["error"]["desc"]
    # The monitor and the guest carry on.
    assert raw.send('{"execute": "query-status"}')["return"]["running"] is True
    vm.wait_serial(b"A", timeout=30)
    raw.close()


def test_pmemsave_errors(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    vm = lab.start(vmm_any_accel, "guest")
    answer = vm.raw("pmemsave", {"val": 0, "size": 16, "filename": "/nonexistent/dir/x"})
    assert answer["error"]["class"] == "GenericError"
    assert "Could not open '/nonexistent/dir/x'" in answer["error"]["desc"]


def test_introspection(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    vm = lab.start(vmm_any_accel, "guest")
    vm.wait_serial(b"A", timeout=30)  # QEMU's BIOS has loaded the boot sector by then
    names = {c["name"] for c in vm.cmd("query-commands")}
    assert {"qmp_capabilities", "query-status", "stop", "cont", "quit", "system_reset",
            "query-version", "query-name", "query-kvm", "query-cpus-fast", "pmemsave",
            "memsave", "human-monitor-command"} <= names
    assert vm.cmd("query-kvm") == {"enabled": False, "present": True}
    assert vm.cmd("query-memory-size-summary") == {"base-memory": 150 << 20,
                                                   "plugged-memory": 0}
    cpus = vm.cmd("query-cpus-fast")
    assert len(cpus) == 1 and cpus[0]["cpu-index"] == 0 and cpus[0]["thread-id"] > 0
    assert vm.cmd("human-monitor-command", **{"command-line": "info status"}) \
        == "VM status: running\r\n"
    vm.cmd("stop")
    assert vm.cmd("human-monitor-command", **{"command-line": "info status"}) \
        == "VM status: paused\r\n"
    out = vm.workdir / "memsave.bin"
    vm.cmd("memsave", val=0x7C00, size=512, filename=str(out))
    assert out.read_bytes()[510:] == b"\x55\xaa"


def test_quit_is_answered_before_the_process_ends(vmm_any_accel: VmmKind,
                                                  lab: VmLauncher) -> None:
    """The answer to quit reaches the client every time (it is written
    before the process exits, not raced against the exit)."""
    for index in range(10):
        vm = lab.start(vmm_any_accel, f"q{index}", boot=False)
        answer = vm.raw("quit")
        assert answer == {"return": {}}, answer
        assert vm.wait_exit(30) == 0
