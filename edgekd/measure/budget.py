"""The budget verdict: which of a target's limits a latency record and a file size meet, and one
sentence saying so and on what basis (measured or estimated). `edgekd compress`'s report and
`edgekd bench` both word it here, so they agree."""

from __future__ import annotations

from edgekd.config import Target


def budget_verdict(target: Target, latency: dict, size_bytes: int) -> dict:
    """The budget record of report.json: which limits hold for this latency record
    (`Latency.as_dict()`) and file size, and one sentence saying so and on what basis."""
    limits = {"p50": target.budget_p50_ms, "p99": target.budget.latency_p99_ms}
    checks = {k: latency[k] <= v for k, v in limits.items() if v is not None}
    size_mb = size_bytes / 1e6
    if target.budget.memory_mb is not None:
        checks["memory"] = size_mb <= target.budget.memory_mb
    met = all(checks.values())
    basis = "measured" if latency["source"] == "measured" else "estimated (roofline; confirm on the device with `edgekd bench`)"
    stated = ", ".join(f"{k} {latency[k]:.3f} ms vs {v:.3f} ms" for k, v in limits.items() if v is not None)
    return {
        "latency_ms": {k: v for k, v in limits.items()},
        "memory_mb": target.budget.memory_mb,
        "fps": target.budget.fps,
        "met": met,
        "checks": checks,
        "source": latency["source"],
        "verdict": f"{'MET' if met else 'MISSED'} on {target.name}: {stated}; {basis}",
    }
