"""The budget verdict: which of a target's limits a latency record and a file size meet, and one
sentence saying so and on what basis (measured on the device, measured elsewhere under
`--measure-here`, or estimated). `edgekd compress`'s report and `edgekd bench` both word it here,
so they agree. A limit the latency record has no number for (an estimate's p99) is listed under
`not_estimated`, never checked against a stand-in.

A measured p50 is MET or MISSED. An estimate carries an interval from the estimator's measured
error (edgekd.measure.estimate): MET when its upper end is within the limit, MISSED when its lower
end is over it, NOT SHOWN in between (exit 6, as for accuracy: docs/latency_estimate.md)."""

from __future__ import annotations

from edgekd.config import Target


MET, MISSED, NOT_SHOWN = "MET", "MISSED", "NOT SHOWN"


def p50_state(latency: dict, limit: float) -> str:
    """MET, MISSED or NOT SHOWN for a p50 limit: a measured time by itself, an estimate by its interval."""
    p50 = latency["p50"]
    if latency.get("source") == "measured" or latency.get("p50_high") is None:
        return MET if p50 <= limit else MISSED
    if latency["p50_high"] <= limit:
        return MET
    return MISSED if latency["p50_low"] > limit else NOT_SHOWN


def latency_met(budget: dict) -> bool:
    """Whether a budget record's latency and memory limits hold (its accuracy check aside): what
    the printed latency line's colour and budget pruning's account both follow."""
    return all(v for k, v in budget["checks"].items() if k != "accuracy")


def budget_verdict(target: Target, latency: dict, size_bytes: int, note: str = "") -> dict:
    """The budget record of report.json for this latency record (`Latency.as_dict()`) and file
    size. `note`: TargetLatency.note (why it is estimated, or where it was measured off the device)."""
    limits = {"p50": target.budget_p50_ms, "p99": target.budget.latency_p99_ms}
    checks = {k: latency[k] <= v for k, v in limits.items() if v is not None and latency.get(k) is not None}
    states = {k: (MET if ok else MISSED) for k, ok in checks.items()}
    if limits["p50"] is not None:
        states["p50"] = p50_state(latency, limits["p50"])
        checks["p50"] = states["p50"] != MISSED  # NOT SHOWN is no miss, and no MET either
    not_estimated = [k for k, v in limits.items() if v is not None and latency.get(k) is None]
    size_mb = size_bytes / 1e6
    if target.budget.memory_mb is not None:
        checks["memory"] = size_mb <= target.budget.memory_mb
    state = MISSED if not all(checks.values()) else (NOT_SHOWN if NOT_SHOWN in states.values() else MET)
    met = state == MET
    estimated = latency["source"] != "measured"
    if estimated:
        kind = latency.get("basis") or "roofline"
        basis = f"estimated ({kind}" + (f"; {note}" if note else "") + "; confirm on the device with `edgekd bench`)"
    else:
        basis = note or f"measured on {target.device.label}"

    def said(k: str, v: float) -> str:
        if latency.get(k) is None:
            return f"{k} not estimated (limit {v:.3f} ms)"
        if k == "p50" and estimated and latency.get("p50_high") is not None:
            return (f"p50 {latency['p50']:.3f} ms (between {latency['p50_low']:.3f} and {latency['p50_high']:.3f} "
                    f"within the estimator's error range) vs {v:.3f} ms")
        return f"{k} {latency[k]:.3f} ms vs {v:.3f} ms"

    stated = ", ".join(said(k, v) for k, v in limits.items() if v is not None)
    return {
        "latency_ms": {k: v for k, v in limits.items()},
        "memory_mb": target.budget.memory_mb,
        "fps": target.budget.fps,
        "met": met,
        "state": state,  # of latency and memory: MET, MISSED or NOT SHOWN
        "checks": checks,
        "not_estimated": not_estimated,
        "source": latency["source"],
        "on_target": latency["source"] == "measured" and not note,
        "verdict": f"{state} on {target.name}: {stated}; {basis}",
    }


def join_accuracy(budget: dict, accuracy: dict, not_shown: str) -> dict:
    """One verdict from the latency record (`budget_verdict`) and an accuracy verdict (MET, MISSED or NOT
    SHOWN), in place: what `report.json` -> `budget` holds and the exit code follows. `not_shown`: the
    profile's `[accuracy] not_shown` ("pass" lets an accuracy NOT SHOWN exit 0; a latency one needs the
    device, `edgekd bench` there)."""
    budget["accuracy"] = accuracy
    budget["checks"]["accuracy"] = accuracy["state"] != MISSED  # NOT SHOWN is no miss, and no MET either
    latency_state = budget["state"]
    budget["latency_state"] = latency_state
    budget["met"] = all(budget["checks"].values()) and accuracy["state"] == MET and latency_state == MET
    shown = NOT_SHOWN if NOT_SHOWN in (accuracy["state"], latency_state) else MET
    budget["state"] = MISSED if not all(budget["checks"].values()) else shown
    budget["not_shown_passes"] = not_shown == "pass" and latency_state != NOT_SHOWN
    return budget
