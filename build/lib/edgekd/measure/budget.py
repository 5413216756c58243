"""The budget verdict: which of a target's limits a latency record and a file size meet, and one
sentence saying so and on what basis (measured on the device, measured elsewhere under
`--measure-here`, or estimated). `edgekd compress`'s report and `edgekd bench` both word it here,
so they agree. A limit the latency record has no number for (an estimate's p99) is listed under
`not_estimated`, never checked against a stand-in."""

from __future__ import annotations

from edgekd.config import Target


def budget_verdict(target: Target, latency: dict, size_bytes: int, note: str = "") -> dict:
    """The budget record of report.json for this latency record (`Latency.as_dict()`) and file
    size. `note`: TargetLatency.note (why it is estimated, or where it was measured off the device)."""
    limits = {"p50": target.budget_p50_ms, "p99": target.budget.latency_p99_ms}
    checks = {k: latency[k] <= v for k, v in limits.items() if v is not None and latency.get(k) is not None}
    not_estimated = [k for k, v in limits.items() if v is not None and latency.get(k) is None]
    size_mb = size_bytes / 1e6
    if target.budget.memory_mb is not None:
        checks["memory"] = size_mb <= target.budget.memory_mb
    met = all(checks.values())
    if latency["source"] != "measured":
        basis = "estimated (roofline" + (f"; {note}" if note else "") + "; confirm on the device with `edgekd bench`)"
    else:
        basis = note or f"measured on {target.device.label}"
    stated = ", ".join(f"{k} {latency[k]:.3f} ms vs {v:.3f} ms" if latency.get(k) is not None
                       else f"{k} not estimated (limit {v:.3f} ms)" for k, v in limits.items() if v is not None)
    return {
        "latency_ms": {k: v for k, v in limits.items()},
        "memory_mb": target.budget.memory_mb,
        "fps": target.budget.fps,
        "met": met,
        "checks": checks,
        "not_estimated": not_estimated,
        "source": latency["source"],
        "on_target": latency["source"] == "measured" and not note,
        "verdict": f"{'MET' if met else 'MISSED'} on {target.name}: {stated}; {basis}",
    }
