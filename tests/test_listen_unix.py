"""A unix listener's socket file appears only once it accepts connections."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from livemig.migration import listener
from livemig.migration.listener import listen_unix


def _connects(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
        try:
            peer.connect(path)
        except OSError:
            return False
        return True


def test_the_path_appears_only_once_the_socket_listens(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that waits for the file and then connects is never refused:
    at the moment the name appears the socket already listens."""
    target = str(tmp_path / "dst.sock")
    real_rename = os.rename
    seen: list[bool] = []

    def rename(src: str, dst: str) -> None:
        assert dst == target and not os.path.exists(target)
        seen.append(_connects(src))   # the private name already accepts
        real_rename(src, dst)

    monkeypatch.setattr(listener.os, "rename", rename)
    sock = listen_unix(target, 1)
    try:
        assert seen == [True]
        assert _connects(target)
        assert sorted(os.listdir(tmp_path)) == ["dst.sock"]   # no private name left over
    finally:
        sock.close()


def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    target = str(tmp_path / "dst.sock")
    stale = listen_unix(target, 1)
    stale.close()                       # the file stays, nobody listens
    assert not _connects(target)
    sock = listen_unix(target, 1)
    try:
        assert _connects(target)
    finally:
        sock.close()


def test_no_room_for_a_private_name_binds_in_place(tmp_path: Path) -> None:
    """A path a few bytes under sun_path's limit still works, as before."""
    folder = tmp_path / ("d" * max(1, 100 - len(str(tmp_path))))
    folder.mkdir()
    target = str(folder / "s")
    assert len(os.fsencode(target)) < listener.UNIX_PATH_MAX
    sock = listen_unix(target, 1)
    try:
        assert _connects(target)
    finally:
        sock.close()


def test_a_failed_bind_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        listen_unix(str(tmp_path / "missing-folder" / "s"), 1)
    assert os.listdir(tmp_path) == []
