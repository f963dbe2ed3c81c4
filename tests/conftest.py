"""Shared fixtures: the VMM axis and a launcher that cleans up after itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from livemig.lab import LIVEMIG_BINARY, QEMU_BINARY, VmLauncher, VmmKind, find_binary, kvm_usable

LIVEMIG = find_binary(LIVEMIG_BINARY)
QEMU = find_binary(QEMU_BINARY)
KVM_PROBLEM = kvm_usable()

# Under nested KVM (these machines) the guest's memory walk is ~40x slower
# than under tcg: kvm waits get this much more time.
KVM_SLOWDOWN = 6.0


def _kinds() -> list[pytest.param]:
    return [
        pytest.param(VmmKind("livemig-tcg", LIVEMIG or LIVEMIG_BINARY, "tcg"), id="livemig-tcg",
                     marks=pytest.mark.skipif(LIVEMIG is None, reason="livemig not installed")),
        pytest.param(VmmKind("livemig-kvm", LIVEMIG or LIVEMIG_BINARY, "kvm"), id="livemig-kvm",
                     marks=pytest.mark.skipif(KVM_PROBLEM is not None,
                                              reason=f"KVM unusable: {KVM_PROBLEM}")),
        pytest.param(VmmKind("qemu-tcg", QEMU or QEMU_BINARY, "tcg"), id="qemu-tcg",
                     marks=pytest.mark.skipif(QEMU is None,
                                              reason=f"{QEMU_BINARY} is not installed")),
    ]


ALL_VMMS = _kinds()
# Behaviour that does not depend on the accelerator: livemig once, and QEMU.
NO_KVM_VMMS = [p for p in ALL_VMMS if p.id != "livemig-kvm"]


@pytest.fixture(params=ALL_VMMS)
def vmm(request: pytest.FixtureRequest) -> VmmKind:
    """Each scenario runs on livemig tcg, livemig kvm and QEMU."""
    return request.param


@pytest.fixture(params=NO_KVM_VMMS)
def vmm_any_accel(request: pytest.FixtureRequest) -> VmmKind:
    """For checks of the monitor, not the accelerator: livemig tcg and QEMU."""
    return request.param


@pytest.fixture(params=[p for p in ALL_VMMS if p.id == "livemig-tcg"])
def livemig_tcg(request: pytest.FixtureRequest) -> VmmKind:
    """For livemig-only protocol behaviour (QEMU differs, or the test speaks
    livemig's own stream): the accelerator does not matter, tcg is quickest."""
    return request.param


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[VmLauncher]:
    """Starts VMs under tmp_path and kills every process it started at teardown."""
    launcher = VmLauncher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.close()


def slowdown(kind: VmmKind) -> float:
    return KVM_SLOWDOWN if kind.accel == "kvm" else 1.0
