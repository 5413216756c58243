"""`edgekd check`: the CI regression gate between a run's report.json and an accepted baseline's.

Latency is compared as the *normalised* latency: the student's p50 over a reference's, both INT8,
of the same layers and similar size, timed side by side at a batch where arithmetic dominates
(edgekd.measure.normalised_latency). So a CI machine with another CPU, or busier than the one that made the
baseline, does not move the verdict, while a student with more work does (README "CI latency
gate" has the measurements). Accuracy is the final stage's top-1, compared in absolute points.

Runs are comparable only when the target, the gate's threads, batch and reference, and the final
stage agree: anything else fails (exit 4) unless `allow_mismatch`, which turns it into a note.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from typing import Annotated, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekd.errors import BadInputError

# What the gate reads from a report, as validated data: a report cannot pass with numbers no run
# produces (a latency <= 0, negative MACs, top-1 over 100%) or a `target` that is not a table.
Milliseconds = Annotated[float, Field(gt=0)]


class _Read(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False, strict=False)


class _Latency(_Read):
    p50: Milliseconds
    p90: Optional[Milliseconds] = None
    p99: Optional[Milliseconds] = None


class _Stage(_Read):
    name: str
    accuracy: Annotated[float, Field(ge=0, le=1)]
    macs: Annotated[float, Field(ge=0)]
    latency_ms: Optional[_Latency] = None


class _Reference(_Read):
    normalised_latency: Annotated[float, Field(gt=0)]
    macs: Optional[Annotated[int, Field(ge=0)]] = None
    batch: Optional[Annotated[int, Field(gt=0)]] = None
    threads: Optional[Annotated[int, Field(gt=0)]] = None
    student_ms: Optional[_Latency] = None
    reference_ms: Optional[_Latency] = None


class _Target(_Read):
    name: str


class GateReport(_Read):
    target: Optional[_Target] = None  # very old baselines have none; a report always has one
    stages: Annotated[list[_Stage], Field(min_length=1)]
    reference: _Reference


def validate_report(report: dict, name: str) -> None:
    """Every number the gate compares, checked for being one a real run could write."""
    try:
        GateReport.model_validate(report)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise BadInputError(f"{name}: field '{field}' is {repr(first.get('input'))[:80]}: "
                            f"{first['msg'][0].lower() + first['msg'][1:]} (not a report a run can write)") from None


@dataclass(frozen=True)
class GateResult:
    ok: bool
    lines: list[str]  # one per check, with the numbers that moved, then the overall verdict
    figures: dict | None = None  # the same as data: `edgekd check --json` (keys in the README)

    def as_dict(self) -> dict:
        return {"ok": self.ok, **(self.figures or {}), "lines": self.lines}


def _number(report: dict, name: str, *keys: str | int) -> float:
    """report[k1][k2]...: a finite number, or a one-line BadInputError naming the file and key."""
    value: object = report
    walked = ""
    for key in keys:
        walked += f"[{key}]" if isinstance(key, int) else (f".{key}" if walked else str(key))
        try:
            value = value[key]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            raise BadInputError(f"{name}: missing key '{walked}' (is it an edgekd report.json?)") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadInputError(f"{name}: '{walked}' is {value!r}, not a number")
    return float(value)


def require_complete(report: object, name: str, *, required: bool) -> dict:
    """The report, if a run finished it (`"status": "complete"`); else a one-line refusal.
    `required=False` (the baseline) also accepts a report from before edgekd wrote a status."""
    if not isinstance(report, dict):
        raise BadInputError(f"{name}: not an edgekd report.json (a JSON object)")
    if report.get("task") == "detect":
        raise BadInputError(f"{name}: a detection run; `edgekd check` gates classification runs only so far "
                            "(compare report.json's budget.accuracy and stage latencies instead)")
    status = report.get("status")
    if status == "complete" or (status is None and not required):
        return report
    raise BadInputError(f"{name}: the run that wrote it did not complete (status {status!r}); "
                        "rerun or resume it before checking it")


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.3g}%"


def compare(report: dict, baseline: dict, tolerance: float, accuracy_tolerance: float, *,
            macs_tolerance: float = 0.10, report_name: str = "report", baseline_name: str = "baseline",
            allow_mismatch: bool = False) -> GateResult:
    """Fail when normalised latency grew by more than `tolerance` (relative, 0.10 = 10%), the
    final student's MACs per image by more than `macs_tolerance` (relative), the final top-1
    dropped by more than `accuracy_tolerance` (absolute, 0.01 = 1 point), or the two runs are not
    comparable (unless `allow_mismatch`).

    MACs are exact and the same on every machine; timing is not, and on a model as small as the
    smoke student a 1.5x-MAC student moves its latency less than CI noise (README "CI latency
    gate"). The latency check catches what MACs cannot see: a layer left in float, an unfused op.

    `report_name` / `baseline_name` (the files' paths, from the CLI) name the culprit in errors.
    """
    new_latency = _number(report, report_name, "reference", "normalised_latency")
    old_latency = _number(baseline, baseline_name, "reference", "normalised_latency")
    new_accuracy = _number(report, report_name, "stages", -1, "accuracy")
    new_macs = _number(report, report_name, "stages", -1, "macs")
    old_macs = _number(baseline, baseline_name, "stages", -1, "macs")
    old_accuracy = _number(baseline, baseline_name, "stages", -1, "accuracy")
    if old_latency <= 0:
        raise BadInputError(f"{baseline_name}: 'reference.normalised_latency' is {old_latency}, not positive")
    validate_report(report, report_name)
    validate_report(baseline, baseline_name)

    lines = []
    growth = new_latency / old_latency - 1.0
    latency_ok = growth <= tolerance
    lines.append(f"latency: normalised {old_latency:.3f} -> {new_latency:.3f} ({growth:+.1%}, "
                 f"tolerance {_percent(tolerance)}): {'ok' if latency_ok else 'REGRESSION'}")

    macs_growth = new_macs / old_macs - 1.0 if old_macs > 0 else 0.0
    macs_ok = macs_growth <= macs_tolerance
    lines.append(f"work: MACs per image {old_macs:,.0f} -> {new_macs:,.0f} ({macs_growth:+.1%}, "
                 f"tolerance {_percent(macs_tolerance)}): {'ok' if macs_ok else 'REGRESSION'}")

    drop = old_accuracy - new_accuracy
    accuracy_ok = drop <= accuracy_tolerance + 1e-12  # a drop exactly at the tolerance passes
    lines.append(f"accuracy: top-1 {100 * old_accuracy:.2f}% -> {100 * new_accuracy:.2f}% "
                 f"({100 * (new_accuracy - old_accuracy):+.2f} points, tolerance {100 * accuracy_tolerance:.2f} points): "
                 f"{'ok' if accuracy_ok else 'REGRESSION'}")

    mismatches = mismatches_between(report, baseline)
    if allow_mismatch:
        lines += [f"note: {m} (allowed by --allow-mismatch)" for m in mismatches]
    else:
        lines += [f"MISMATCH: {m}" for m in mismatches]
    comparable = allow_mismatch or not mismatches
    ok = latency_ok and macs_ok and accuracy_ok and comparable
    if ok:
        lines.append("PASS")
    elif not comparable and latency_ok and macs_ok and accuracy_ok:
        lines.append("FAIL: the runs are not comparable (pass --allow-mismatch to compare them anyway)")
    else:
        lines.append("FAIL: slower, more work or less accurate than the baseline")
    figures = {
        "report": report_name, "baseline": baseline_name,
        "latency": {"baseline": old_latency, "current": new_latency, "change": growth, "tolerance": tolerance,
                    "ok": latency_ok},
        "macs": {"baseline": old_macs, "current": new_macs, "change": macs_growth, "tolerance": macs_tolerance,
                 "ok": macs_ok},
        "accuracy": {"baseline": old_accuracy, "current": new_accuracy, "change": new_accuracy - old_accuracy,
                     "tolerance": accuracy_tolerance, "ok": accuracy_ok},
        "mismatches": mismatches, "mismatch_allowed": allow_mismatch,
    }
    return GateResult(ok, lines, figures)


GATE_KEYS = ("batch", "threads", "model", "macs")  # of report["reference"]: how the gate timed


def mismatches_between(report: dict, baseline: dict) -> list[str]:
    """What differs between two runs that makes their normalised latencies incomparable."""
    found = []
    new_target = (report.get("target") or {}).get("name")
    old_target = (baseline.get("target") or {}).get("name")
    if new_target != old_target:
        found.append(f"target is {new_target!r} now, {old_target!r} in the baseline")
    new_ref, old_ref = report["reference"], baseline["reference"]
    for key in GATE_KEYS:
        if new_ref.get(key) != old_ref.get(key):
            found.append(f"gate {key} is {new_ref.get(key)!r} now, {old_ref.get(key)!r} in the baseline"
                         + (" (a baseline from an older edgekd: regenerate it)" if key not in old_ref else ""))
    new_stage, old_stage = report["stages"][-1].get("name"), baseline["stages"][-1].get("name")
    if new_stage != old_stage:
        found.append(f"final stage is {new_stage!r} now, {old_stage!r} in the baseline")
    return found
