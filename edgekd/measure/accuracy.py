"""The accuracy budget: how far the student's top-1 may fall below its teacher's.

Judged on the validation split (the test split is only reported). Both models are run on the same
validation images, so the drop is a paired difference, and the verdict holds its one-sided upper
confidence bound to the budget: with 160 validation images a 1-point budget cannot be shown, and
the run says so rather than passing a student whose loss it could not rule out.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from edgekd.config import Profile, Target


def pack_hits(hits: np.ndarray) -> str:
    """Per-image right/wrong as a hex string (1 bit an image): small enough for a stage record."""
    return np.packbits(hits.astype(bool)).tobytes().hex()


def unpack_hits(packed: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(packed), dtype=np.uint8))[:n].astype(bool)


def allowed_drop(profile: Profile, target: Target) -> float:
    """Points of top-1 the student may lose: the profile's budget, tightened by the target's."""
    if target.max_accuracy_drop is None:
        return profile.accuracy.max_drop
    return min(profile.accuracy.max_drop, target.max_accuracy_drop)


def accuracy_floor(teacher_val_accuracy: float, profile: Profile, target: Target) -> float:
    """The lowest validation top-1 (0..1) the student may end with (a point estimate: what the
    stages aim for while they train)."""
    return max(0.0, teacher_val_accuracy - allowed_drop(profile, target) / 100.0)  # never "above -90%"


def paired_drop(teacher: dict, student: dict, confidence: float) -> tuple[float, float, int]:
    """(drop, upper bound of the drop, images), in points, from two records' per-image results on
    the same validation images; without them (an older record) the bound is the drop itself."""
    drop = 100.0 * (teacher["val_accuracy"] - student["val_accuracy"])
    if not teacher.get("val_correct") or not student.get("val_correct") or "val_images" not in teacher:
        return drop, drop, 0
    n = teacher["val_images"]
    diff = unpack_hits(teacher["val_correct"], n).astype(float) - unpack_hits(student["val_correct"], n).astype(float)
    spread = float(diff.std(ddof=1)) if n > 1 else 1.0
    # a difference never seen (no disagreements) still has the uncertainty of one in n
    spread = max(spread, 1.0 / math.sqrt(n))
    upper = drop + 100.0 * NormalDist().inv_cdf(confidence) * spread / math.sqrt(n)
    return drop, upper, n


def stage_that_lost_most(records: list[dict]) -> tuple[str | None, float]:
    """The stage whose own step cost the most validation top-1 (points below the stage before it):
    a collapse late in the chain is named even when an earlier, smaller loss was first over budget."""
    steps = [(r["name"], 100.0 * (parent["val_accuracy"] - r["val_accuracy"])) for parent, r in zip(records, records[1:])]
    return max(steps, key=lambda step: step[1]) if steps else (None, 0.0)


def accuracy_verdict(records: list[dict], profile: Profile, target: Target) -> dict:
    """Whether the final student keeps the teacher's validation top-1 within the budget, at the
    profile's confidence; when it does not, which stage first could not be shown within it."""
    teacher, final = records[0], records[-1]
    max_drop = allowed_drop(profile, target)
    confidence = profile.accuracy.confidence
    drop, upper, images = paired_drop(teacher, final, confidence)
    met = upper <= max_drop + 1e-9
    first_below = next((r["name"] for r in records[1:]
                        if paired_drop(teacher, r, confidence)[1] > max_drop + 1e-9), None)
    most_lost, most_lost_points = stage_that_lost_most(records)
    change = f"lost {drop:.2f} points" if drop >= 0 else f"gained {-drop:.2f} points"
    bound = (f" (at most {upper:.2f} at {100 * confidence:g}% confidence, {images} validation images)"
             if images else "")
    numbers = (f"student ({final['name']}) {100 * final['val_accuracy']:.2f}% vs teacher "
               f"{100 * teacher['val_accuracy']:.2f}% on validation: {change}{bound}, {max_drop:g} allowed")
    if met:
        verdict = f"accuracy MET: {numbers}"
    elif drop <= max_drop:
        verdict = (f"accuracy MISSED: {numbers}; the validation split is too small to show the student within "
                   f"the budget (add validation images, or raise accuracy.max_drop)")
    else:
        where = f"; first over budget at the {first_below} stage" if first_below else ""
        if most_lost and most_lost_points > 0:
            where += f"; the {most_lost} stage lost the most ({most_lost_points:.2f} points below its parent)"
        verdict = f"accuracy MISSED: {numbers}{where}"
    return {
        "split": "validation",
        "images": images,
        "teacher": teacher["val_accuracy"],
        "student": final["val_accuracy"],
        "drop_points": drop,
        "drop_upper_points": upper,
        "confidence": confidence,
        "max_drop_points": max_drop,
        "floor": accuracy_floor(teacher["val_accuracy"], profile, target),
        "met": met,
        "first_stage_below": first_below,
        "most_lost_stage": most_lost,
        "most_lost_points": most_lost_points,
        "verdict": verdict,
    }
