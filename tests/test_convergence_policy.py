"""QemuPolicy, the default convergence policy, as a pure function of pass
reports (issue 10): switchover, and auto-converge's throttle steps."""

from __future__ import annotations

from typing import Any

from livemig.migration.convergence import PassLog, PassReport, QemuPolicy
from livemig.migration.params import Settings

MIB = 1 << 20


def _report(dirty_mib: float, sent_mib: float = 20, seconds: float = 1.0,
            throttle: int = 0, number: int = 2) -> PassReport:
    return PassReport(number, seconds, int(sent_mib * MIB), int(sent_mib * MIB),
                      int(dirty_mib * MIB / 4096), 4096, throttle, 300)


def _settings(**changes: Any) -> tuple[dict[str, Any], dict[str, bool]]:
    settings = Settings()
    params = dict(settings.params)
    params.update({k.replace("_", "-"): v for k, v in changes.items()})
    caps = dict(settings.caps)
    return params, caps


def test_switchover_once_the_rest_fits_the_downtime() -> None:
    params, caps = _settings()
    policy = QemuPolicy()
    assert policy.decide(_report(5), params, caps).action == "switchover"  # 250 ms at 20 MiB/s
    assert policy.decide(_report(7), params, caps).action == "continue"    # 350 ms


def test_auto_converge_steps() -> None:
    params, caps = _settings(cpu_throttle_initial=30, cpu_throttle_increment=20,
                             max_cpu_throttle=60)
    caps["auto-converge"] = True
    policy = QemuPolicy()
    throttle, seen = 0, []
    for _ in range(8):  # each pass dirties 40 MiB while sending 20: always "high"
        decision = policy.decide(_report(40, throttle=throttle), params, caps)
        if decision.action == "throttle":
            throttle = decision.throttle
            seen.append(throttle)
    assert seen == [30, 50, 60, 60]  # every second high period; capped at max-cpu-throttle


def test_auto_converge_waits_for_a_second_of_passes() -> None:
    params, caps = _settings()
    caps["auto-converge"] = True
    policy = QemuPolicy()
    decisions = [policy.decide(_report(40, seconds=0.25), params, caps).action
                 for _ in range(8)]
    assert decisions.count("throttle") == 1 and decisions[7] == "throttle", decisions


def test_tailslow_raises_by_what_the_dirty_rate_needs() -> None:
    params, caps = _settings(cpu_throttle_tailslow=True, cpu_throttle_increment=30)
    caps["auto-converge"] = True
    policy = QemuPolicy()
    # dirtied 24 MiB a second against a threshold of 10 (50% of 20): at 40% now,
    # cpu 60 -> ideal 25: the step would be 35, capped by the increment 30.
    steps = [policy.decide(_report(24, throttle=40), params, caps) for _ in range(2)]
    assert steps[1].action == "throttle" and steps[1].throttle == 70
    # dirtied 11 against 10: ideal cpu 54.5 of 60, a step of 5.
    steps = [policy.decide(_report(11, throttle=40), params, caps) for _ in range(2)]
    assert steps[1].throttle == 45


def test_pass_log_for_query_migrate() -> None:
    log = PassLog()
    policy = QemuPolicy()
    params, caps = _settings()
    report = _report(5)
    log.record(report, policy.decide(report, params, caps))
    entry = log.to_qmp()[0]
    assert entry["decision"] == "switchover" and entry["pass"] == 2
    assert entry["expected-downtime"] == 250 and entry["dirty-pages"] == 1280
