"""`edgekd check`: the CI regression gate between a run's report.json and an accepted baseline's.

Latency is compared as the *normalised* latency (student p50 / fixed reference model p50, both
timed in the same run on the same machine), so a CI runner that is faster or busier than the one
that made the baseline does not move the verdict; absolute milliseconds would. Accuracy is the
final stage's top-1, compared in absolute points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgekd.errors import BadInputError


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
    status = report.get("status")
    if status == "complete" or (status is None and not required):
        return report
    raise BadInputError(f"{name}: the run that wrote it did not complete (status {status!r}); "
                        "rerun or resume it before checking it")


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.3g}%"


def compare(report: dict, baseline: dict, tolerance: float, accuracy_tolerance: float, *,
            report_name: str = "report", baseline_name: str = "baseline") -> GateResult:
    """Fail when normalised latency grew by more than `tolerance` (relative, 0.10 = 10%) or the
    final top-1 dropped by more than `accuracy_tolerance` (absolute, 0.01 = 1 point).

    `report_name` / `baseline_name` (the files' paths, from the CLI) name the culprit in errors.
    """
    new_latency = _number(report, report_name, "reference", "normalised_latency")
    old_latency = _number(baseline, baseline_name, "reference", "normalised_latency")
    new_accuracy = _number(report, report_name, "stages", -1, "accuracy")
    old_accuracy = _number(baseline, baseline_name, "stages", -1, "accuracy")
    if old_latency <= 0:
        raise BadInputError(f"{baseline_name}: 'reference.normalised_latency' is {old_latency}, not positive")

    lines = []
    growth = new_latency / old_latency - 1.0
    latency_ok = growth <= tolerance
    lines.append(f"latency: normalised {old_latency:.3f} -> {new_latency:.3f} ({growth:+.1%}, "
                 f"tolerance {_percent(tolerance)}): {'ok' if latency_ok else 'REGRESSION'}")

    drop = old_accuracy - new_accuracy
    accuracy_ok = drop <= accuracy_tolerance + 1e-12  # a drop exactly at the tolerance passes
    lines.append(f"accuracy: top-1 {100 * old_accuracy:.2f}% -> {100 * new_accuracy:.2f}% "
                 f"({100 * (new_accuracy - old_accuracy):+.2f} points, tolerance {100 * accuracy_tolerance:.2f} points): "
                 f"{'ok' if accuracy_ok else 'REGRESSION'}")

    notes = _comparability_notes(report, baseline)
    lines += notes
    ok = latency_ok and accuracy_ok
    lines.append("PASS" if ok else "FAIL: slower or less accurate than the baseline")
    figures = {
        "report": report_name, "baseline": baseline_name,
        "latency": {"baseline": old_latency, "current": new_latency, "change": growth, "tolerance": tolerance,
                    "ok": latency_ok},
        "accuracy": {"baseline": old_accuracy, "current": new_accuracy, "change": new_accuracy - old_accuracy,
                     "tolerance": accuracy_tolerance, "ok": accuracy_ok},
        "notes": notes,
    }
    return GateResult(ok, lines, figures)


def _comparability_notes(report: dict, baseline: dict) -> list[str]:
    """Ratios compare across machines only when both runs timed the same batch with the same
    thread count and the same final stage: say so when they did not (a note, not a failure)."""
    notes = []
    new_ref = report["reference"].get("reference_ms") or {}
    old_ref = baseline["reference"].get("reference_ms") or {}
    for key in ("batch", "runtime"):
        if key in new_ref and key in old_ref and new_ref[key] != old_ref[key]:
            notes.append(f"note: reference timed with {key} {old_ref[key]!r} in the baseline, "
                         f"{new_ref[key]!r} now; the ratio may not be comparable")
    new_stage, old_stage = report["stages"][-1].get("name"), baseline["stages"][-1].get("name")
    if new_stage != old_stage:
        notes.append(f"note: final stage is '{new_stage}' now, '{old_stage}' in the baseline")
    return notes
