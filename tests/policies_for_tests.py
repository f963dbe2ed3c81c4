"""Convergence policies loaded by livemig-system-x86_64 from this directory
(``module:Class``) in tests/test_convergence_policies.py."""

from __future__ import annotations

import os
from typing import Any

from livemig.migration.convergence import Decision, PassReport


class SwitchAtThirdPass:
    """Switch over at the third pass, whatever downtime-limit says; note
    every call in the file named by $POLICY_LOG."""

    def __init__(self) -> None:
        self.calls = 0

    def decide(self, report: PassReport, params: dict[str, Any],
               caps: dict[str, bool]) -> Decision:
        self.calls += 1
        with open(os.environ["POLICY_LOG"], "a") as log:
            log.write(f"{report.number} {report.dirty_pages}\n")
        return Decision("switchover" if self.calls == 3 else "continue")


class Explodes:
    def decide(self, report: PassReport, params: dict[str, Any],
               caps: dict[str, bool]) -> Decision:
        raise RuntimeError("policy exploded")


class ReturnsNone:
    def decide(self, report: PassReport, params: dict[str, Any],
               caps: dict[str, bool]) -> Decision:
        return None  # type: ignore[return-value]
