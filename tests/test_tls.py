"""TLS on migration (issue 9): x509 and PSK credentials created by -object
and object-add, tls-hostname, tls-authz; every channel encrypted; each
refusal case refused with the source guest running on.

Every case runs on livemig and QEMU with the same files. The migrations
that must complete allow a downtime of TLS_DOWNTIME_MS: QEMU 7.2 moves
about 200 MB/s through TLS here, less than the built-in guest dirties under
tcg, so at the default 300 ms it never converges (measured: 125 passes in
25 s, expected downtime ~500 ms throughout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from migration_helpers import migrate, migrate_end, migration_status, wait_for_status
from postcopy_helpers import set_capability
from stream_scenarios import incoming_uri, migrate_and_check

from livemig.lab import LabError, Vm, VmLauncher, VmmKind, wait_until
from livemig.lab.certs import Ca, client_dn, psk_dir, x509_dirs
from livemig.lab.link import Link

TLS_DOWNTIME_MS = 2000


def _creds(kind: str, endpoint: str, directory: Path, **extra: Any) -> str:
    props = ",".join(f"{k.replace('_', '-')}={v}" for k, v in extra.items())
    return f"{kind},id=tls0,endpoint={endpoint},dir={directory}" + (f",{props}" if props else "")


def _tls_pair(lab: VmLauncher, kind: VmmKind, src_obj: str, dst_obj: str,
              dst_extra: list[str] | None = None, caps: list[str] | None = None,
              src_params: dict[str, Any] | None = None,
              dst_params: dict[str, Any] | None = None) -> tuple[Vm, Vm]:
    src = lab.start(kind, "src", extra=["-object", src_obj])
    dst = lab.start(kind, "dst", extra=["-object", dst_obj, *(dst_extra or []),
                                        "-incoming", "defer"])
    for vm, params in ((src, src_params), (dst, dst_params)):
        for cap in caps or []:
            set_capability(vm, cap)
        vm.cmd("migrate-set-parameters", **{"tls-creds": "tls0", **(params or {})})
    src.cmd("migrate-set-parameters", **{"downtime-limit": TLS_DOWNTIME_MS})
    return src, dst


def _expect_refused(src: Vm, dst: Vm, uri: str) -> str:
    """The migration fails on the source (which runs on); the error it gives."""
    migrate(src, uri)
    info = wait_until(lambda: (i := src.cmd("query-migrate"))["status"] == "failed" and i,
                      60, "the source to fail")
    assert src.status() == "running"
    return str(info.get("error-desc", ""))


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_tls_x509_precopy(vmm_any_accel: VmmKind, lab: VmLauncher, transport: str) -> None:
    kind = vmm_any_accel
    server, client = x509_dirs(lab.workdir / "pki")
    src, dst = _tls_pair(lab, kind, _creds("tls-creds-x509", "client", client),
                         _creds("tls-creds-x509", "server", server),
                         src_params={"tls-hostname": "localhost"})
    migrate_and_check(src, dst, incoming_uri(lab, dst, transport), kind)


def test_tls_x509_multifd(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    kind = vmm_any_accel
    server, client = x509_dirs(lab.workdir / "pki")
    src, dst = _tls_pair(lab, kind, _creds("tls-creds-x509", "client", client),
                         _creds("tls-creds-x509", "server", server), caps=["multifd"],
                         src_params={"multifd-channels": 2}, dst_params={"multifd-channels": 2})
    migrate_and_check(src, dst, incoming_uri(lab, dst, "tcp"), kind)


def test_tls_psk_precopy_and_multifd(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    kind = vmm_any_accel
    key = "a1" * 32
    src, dst = _tls_pair(lab, kind,
                         _creds("tls-creds-psk", "client", psk_dir(lab.workdir, "c", key)),
                         _creds("tls-creds-psk", "server", psk_dir(lab.workdir, "s", key)),
                         caps=["multifd"], src_params={"multifd-channels": 2},
                         dst_params={"multifd-channels": 2})
    migrate_and_check(src, dst, incoming_uri(lab, dst, "tcp"), kind)


def test_tls_objects_by_qmp(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    """object-add / object-del make the same credentials as -object."""
    kind = vmm_any_accel
    server, client = x509_dirs(lab.workdir / "pki")
    src = lab.start(kind, "src")
    dst = lab.start(kind, "dst", extra=["-incoming", "defer"])
    src.cmd("object-add", **{"qom-type": "tls-creds-x509", "id": "tls0",
                             "endpoint": "client", "dir": str(client)})
    dst.cmd("object-add", **{"qom-type": "tls-creds-x509", "id": "tls0",
                             "endpoint": "server", "dir": str(server)})
    dst.cmd("object-add", **{"qom-type": "authz-simple", "id": "auth0",
                             "identity": client_dn()})
    src.cmd("migrate-set-parameters", **{"tls-creds": "tls0", "tls-hostname": "localhost",
                                         "downtime-limit": TLS_DOWNTIME_MS})
    dst.cmd("migrate-set-parameters", **{"tls-creds": "tls0", "tls-authz": "auth0"})
    with pytest.raises(LabError, match="object 'nosuch' not found"):
        src.cmd("object-del", id="nosuch")
    migrate_and_check(src, dst, incoming_uri(lab, dst, "unix"), kind)


def test_tls_authz_refuses_another_client(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    kind = vmm_any_accel
    server, client = x509_dirs(lab.workdir / "pki", client_common="intruder")
    src, dst = _tls_pair(lab, kind, _creds("tls-creds-x509", "client", client),
                         _creds("tls-creds-x509", "server", server),
                         dst_extra=["-object", "authz-simple,id=auth0,identity="
                                    + client_dn().replace(",", ",,")],
                         src_params={"tls-hostname": "localhost"},
                         dst_params={"tls-authz": "auth0"})
    _expect_refused(src, dst, incoming_uri(lab, dst, "unix"))


@pytest.mark.parametrize("case", ["untrusted client CA", "no client certificate",
                                  "hostname mismatch", "psk keys differ", "tls on source only",
                                  "tls on destination only"])
def test_tls_refusals(vmm_any_accel: VmmKind, lab: VmLauncher, case: str) -> None:
    kind = vmm_any_accel
    pki = lab.workdir / "pki"
    if case == "untrusted client CA":
        server, client = x509_dirs(pki, client_ca=Ca("another CA"))
        if kind.is_qemu:
            # QEMU checks its own certificate against its own CA when the
            # object is made, so this source never starts: refused earlier.
            with pytest.raises(LabError, match="failed validation"):
                lab.start(kind, "src", extra=["-object",
                                              _creds("tls-creds-x509", "client", client)])
            return
    else:
        server, client = x509_dirs(pki, with_client_cert=case != "no client certificate")
    src_obj = _creds("tls-creds-x509", "client", client)
    dst_obj = _creds("tls-creds-x509", "server", server)
    hostname = "localhost"
    if case == "psk keys differ":
        src_obj = _creds("tls-creds-psk", "client", psk_dir(lab.workdir, "c", "11" * 32))
        dst_obj = _creds("tls-creds-psk", "server", psk_dir(lab.workdir, "s", "22" * 32))
    if case == "hostname mismatch":
        hostname = "elsewhere.example"
    src, dst = _tls_pair(lab, kind, src_obj, dst_obj, src_params={"tls-hostname": hostname})
    if case == "tls on source only":
        dst.cmd("migrate-set-parameters", **{"tls-creds": ""})
    if case == "tls on destination only":
        src.cmd("migrate-set-parameters", **{"tls-creds": ""})
    error = _expect_refused(src, dst, incoming_uri(lab, dst, "unix"))
    if not kind.is_qemu:
        assert error, "the source says why"


def test_tls_no_client_certificate_without_verify_peer(vmm_any_accel: VmmKind,
                                                      lab: VmLauncher) -> None:
    kind = vmm_any_accel
    server, client = x509_dirs(lab.workdir / "pki", with_client_cert=False)
    src, dst = _tls_pair(lab, kind, _creds("tls-creds-x509", "client", client),
                         _creds("tls-creds-x509", "server", server, verify_peer="off"),
                         src_params={"tls-hostname": "localhost"})
    migrate_and_check(src, dst, incoming_uri(lab, dst, "unix"), kind)


def test_tls_hostname_overrides_the_uri(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    """The certificate names only migration.example: tcp to 127.0.0.1 works
    with tls-hostname set to that name."""
    kind = vmm_any_accel
    server, client = x509_dirs(lab.workdir / "pki", server_hosts=["migration.example"])
    src, dst = _tls_pair(lab, kind, _creds("tls-creds-x509", "client", client),
                         _creds("tls-creds-x509", "server", server))
    uri = incoming_uri(lab, dst, "tcp")
    src.cmd("migrate-set-parameters", **{"tls-hostname": "migration.example"})
    migrate_and_check(src, dst, uri, kind)


def test_livemig_destination_survives_a_bad_handshake(livemig_tcg: VmmKind,
                                                      lab: VmLauncher) -> None:
    """A client that fails the handshake is refused; the destination waits on
    and then takes a good migration. (QEMU 7.2's destination gives up.)"""
    kind = livemig_tcg
    server, client = x509_dirs(lab.workdir / "pki")
    src, dst = _tls_pair(lab, kind, _creds("tls-creds-x509", "client", client),
                         _creds("tls-creds-x509", "server", server),
                         src_params={"tls-hostname": "localhost"})
    uri = incoming_uri(lab, dst, "unix")
    import socket
    with socket.socket(socket.AF_UNIX) as rogue:
        rogue.connect(uri[len("unix:"):])
        rogue.sendall(b"LVMG not a TLS client hello" * 10)
        wait_until(lambda: "refused" in dst.stderr_text(), 30, "the refusal")
    assert migration_status(dst) in ("none", "setup")
    migrate_and_check(src, dst, uri, kind)


def test_tls_postcopy_with_recovery(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    """Postcopy over TLS, paused and recovered over a new TLS channel.

    The first channel runs through a 20 MB/s link, so the postcopy phase
    takes seconds and migrate-pause lands in it (livemig serves a fault with
    a run of pages and, unslowed, finishes this guest in under a second).
    The recovery channel is direct. (livemig still sends a whole first pass
    before it switches, 5 s at this rate; that is issue 11's.)"""
    kind = vmm_any_accel
    server, client = x509_dirs(lab.workdir / "pki")
    src, dst = _tls_pair(lab, kind, _creds("tls-creds-x509", "client", client),
                         _creds("tls-creds-x509", "server", server), caps=["postcopy-ram"],
                         src_params={"tls-hostname": "localhost"})
    uri = incoming_uri(lab, dst, "tcp")
    link = Link(int(uri.rsplit(":", 1)[1]), rate=20_000_000)
    try:
        src.wait_serial(b"B", timeout=60)
        migrate(src, link.uri)
        src.cmd("migrate-start-postcopy")
        wait_for_status(src, "postcopy-active", timeout=120)
        wait_for_status(dst, "postcopy-active", timeout=120)
        src.cmd("migrate-pause")
        wait_until(lambda: migration_status(src) == "postcopy-paused", 60, "the source to pause")
        wait_until(lambda: migration_status(dst) == "postcopy-paused", 60, "the dest to pause")
        assert dst.status() == "running"
        dst.cmd("migrate-recover", uri="tcp:127.0.0.1:0")
        address = wait_until(lambda: dst.cmd("query-migrate").get("socket-address"), 30,
                             "the recovery port")
        migrate(src, f"tcp:127.0.0.1:{address[-1]['port']}", resume=True)
        wait_for_status(src, "completed", timeout=120)
        wait_for_status(dst, "completed", timeout=120)
        migrate_end(src, dst, True, kind)
    finally:
        link.close()
