"""query-sev-capabilities and query-sgx-capabilities: livemig has neither
AMD SEV nor Intel SGX guests; both answer as QEMU does on a host without
them, with a GenericError."""

from __future__ import annotations

from ...errors import QmpError
from ..context import QmpContext
from ..registry import command


@command("query-sev-capabilities")
def query_sev_capabilities(ctx: QmpContext) -> None:
    raise QmpError("SEV is not available in livemig")


@command("query-sgx-capabilities")
def query_sgx_capabilities(ctx: QmpContext) -> None:
    raise QmpError("SGX is not available in livemig")
