"""query-tpm-models and query-tpm-types: livemig emulates no TPM, so both
lists are empty (QEMU built without TPM support answers the same)."""

from __future__ import annotations

from ..context import QmpContext
from ..registry import command


@command("query-tpm-models")
def query_tpm_models(ctx: QmpContext) -> list[str]:
    return []


@command("query-tpm-types")
def query_tpm_types(ctx: QmpContext) -> list[str]:
    return []


@command("query-tpm")
def query_tpm(ctx: QmpContext) -> list[str]:
    return []
