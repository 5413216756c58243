"""The accuracy budget: how far the student's top-1 may fall below its teacher's.

Judged on the test split: the reported one, on which no stage chooses anything (epochs, the QAT
guard, budget pruning's floor all read validation), so an acceptance check there is not tuning on
it. Both models are run on the same test images, so the drop is a paired difference, and the
verdict holds its one-sided upper confidence bound to the budget. Three outcomes: MET (the bound is
within the budget), MISSED (the measured drop is over it) and NOT SHOWN (the drop is within the
budget, the bound is not: the data cannot decide, and the verdict says how many images could).
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


MET, MISSED, NOT_SHOWN = "MET", "MISSED", "NOT SHOWN"


def _wilson(hits, n, z, continuity: bool = False):
    """Wilson score interval (low, high) of a proportion hits / n; `continuity`: with Yates' correction
    (Newcombe 1998, his equations for method 4)."""
    p = hits / n
    if not continuity:
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return centre - half, centre + half
    q = 1 - p
    with np.errstate(invalid="ignore"):
        low = (2 * n * p + z * z - 1 - z * np.sqrt(np.maximum(z * z - 2 - 1 / n + 4 * p * (n * q + 1), 0))) / (2 * (n + z * z))
        high = (2 * n * p + z * z + 1 + z * np.sqrt(np.maximum(z * z + 2 - 1 / n + 4 * p * (n * q - 1), 0))) / (2 * (n + z * z))
    return np.where(hits <= 0, 0.0, np.maximum(low, 0.0)), np.where(hits >= n, 1.0, np.minimum(high, 1.0))


def newcombe_upper(a, b, c, n, confidence, continuity: bool = False):
    """One-sided upper confidence bound on the paired drop (b - c) / n: Newcombe's (1998) square-and-add
    interval for paired proportions (his method 10; `continuity`: with continuity-corrected Wilson
    intervals, his method 11). a: images both got right, b: the teacher only, c: the student only,
    of n. Works on numpy arrays of counts (benchmarks/accuracy_bound.py)."""
    a, b, c = (np.asarray(x, dtype=float) for x in (a, b, c))
    d = n - a - b - c
    z = NormalDist().inv_cdf(confidence)
    teacher, student = (a + b) / n, (a + c) / n
    teacher_high = _wilson(a + b, n, z, continuity)[1]
    student_low = _wilson(a + c, n, z, continuity)[0]
    denominator = np.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    numerator = a * d - b * c  # phi, the correlation of the pairs, with Newcombe's correction:
    numerator = np.where(numerator > 0, np.maximum(numerator - n / 2, 0.0), numerator)  # pulled to 0 by n/2
    with np.errstate(invalid="ignore", divide="ignore"):
        phi = np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), 0.0)
    up, down = teacher_high - teacher, student - student_low
    return (teacher - student) + np.sqrt(np.maximum(up * up - 2 * phi * up * down + down * down, 0.0))


def paired_drop(teacher: dict, student: dict, confidence: float) -> tuple[float, float, int, tuple[float, float, float]]:
    """(drop, upper bound of the drop, images, counts), in points, from two records' per-image
    results on the same test images; without them (an older record) the bound is the drop itself.
    `counts`: (both right, the teacher only, the student only), what `images_to_show` scales.

    The bound is Newcombe's paired score bound (`newcombe_upper`): simulated against the normal
    approximation edgekd used before, it keeps its 95% far better where teacher and student
    disagree on few images, which distillation makes the usual case (docs/accuracy_bound.md)."""
    drop = 100.0 * (teacher["accuracy"] - student["accuracy"])
    if not teacher.get("test_correct") or not student.get("test_correct") or "test_images" not in teacher:
        return drop, drop, 0, (0.0, 0.0, 0.0)
    n = teacher["test_images"]
    t, s = unpack_hits(teacher["test_correct"], n), unpack_hits(student["test_correct"], n)
    counts = (float(np.sum(t & s)), float(np.sum(t & ~s)), float(np.sum(~t & s)))
    return drop, _upper(counts, n, confidence), n, counts


def _upper(counts: tuple[float, float, float], n: float, confidence: float) -> float:
    both, teacher_only, student_only = counts
    upper = 100.0 * float(newcombe_upper(both, teacher_only, student_only, n, confidence))
    if teacher_only + student_only == 0:  # never disagreed: they still may on up to this share of images
        upper = max(upper, 100.0 * (1.0 - (1.0 - confidence) ** (1.0 / n)))
    return upper


def images_to_show(drop: float, counts: tuple[float, float, float], n: int, max_drop: float,
                   confidence: float) -> int | None:
    """About how many images, with the same pattern of agreement, would show a student that loses
    `drop` points within `max_drop`; None when no number can (the drop is at the budget)."""
    if max_drop - drop <= 1e-9:
        return None

    def shown(images: float) -> bool:
        k = images / n
        return _upper(tuple(c * k for c in counts), images, confidence) <= max_drop + 1e-9

    low, high = float(n), float(n)
    while not shown(high):
        low, high = high, high * 2
        if high > 1e10:
            return None
    while high - low > 1:
        middle = (low + high) / 2
        low, high = (low, middle) if shown(middle) else (middle, high)
    return math.ceil(high)


def stage_that_lost_most(records: list[dict]) -> tuple[str | None, float]:
    """The stage whose own step cost the most top-1 (points below the stage before it): a collapse
    late in the chain is named even when an earlier, smaller loss was first over budget."""
    steps = [(r["name"], 100.0 * (parent["accuracy"] - r["accuracy"])) for parent, r in zip(records, records[1:])]
    return max(steps, key=lambda step: step[1]) if steps else (None, 0.0)


def accuracy_verdict(records: list[dict], profile: Profile, target: Target) -> dict:
    """MET, MISSED or NOT SHOWN: whether the final student keeps the teacher's top-1 within the
    budget, judged on the test split (the reported one, which no stage chose anything on), image by
    image against the teacher at the profile's confidence.

    MISSED: the measured drop is over the budget. MET: its upper confidence bound is within it.
    NOT SHOWN: the measured drop is within the budget but these images cannot rule out a larger
    one; the verdict says about how many would."""
    teacher, final = records[0], records[-1]
    max_drop = allowed_drop(profile, target)
    confidence = profile.accuracy.confidence
    drop, upper, images, counts = paired_drop(teacher, final, confidence)
    if drop > max_drop + 1e-9:
        state = MISSED
    elif images and upper <= max_drop + 1e-9:  # no per-image results, no bound: never MET
        state = MET
    else:
        state = NOT_SHOWN
    first_over = next((r["name"] for r in records[1:] if 100.0 * (teacher["accuracy"] - r["accuracy"]) > max_drop + 1e-9), None)
    most_lost, most_lost_points = stage_that_lost_most(records)
    change = f"lost {drop:.2f} points" if drop >= 0 else f"gained {-drop:.2f} points"
    bound = f" (at most {upper:.2f} at {100 * confidence:g}% confidence, {images} test images)" if images else ""
    numbers = (f"student ({final['name']}) {100 * final['accuracy']:.2f}% vs teacher "
               f"{100 * teacher['accuracy']:.2f}% on test: {change}{bound}, {max_drop:g} allowed")
    needed = images_to_show(drop, counts, images, max_drop, confidence) if state == NOT_SHOWN and images else None
    if state == MET:
        verdict = f"accuracy MET: {numbers}"
    elif state == NOT_SHOWN:
        if not images:
            need = "the records hold no per-image test results (an older edgekd wrote them): rerun the stages"
        elif needed:
            need = (f"about {needed:,} test images would show it (add held-out images: a test/ folder, or a "
                    f"larger data.test_fraction)")
        else:
            need = "no number of images can show a drop this close to the budget"
        verdict = (f"accuracy NOT SHOWN: {numbers}; the drop is within the budget but {images} images cannot rule "
                   f"out more; {need}, or raise accuracy.max_drop")
    else:
        where = f"; first over budget at the {first_over} stage" if first_over else ""
        if most_lost and most_lost_points > 0:
            where += f"; the {most_lost} stage lost the most ({most_lost_points:.2f} points below its parent)"
        verdict = f"accuracy MISSED: {numbers}{where}"
    return {
        "split": "test",
        "images": images,
        "teacher": teacher["accuracy"],
        "student": final["accuracy"],
        "drop_points": drop,
        "drop_upper_points": upper,
        "confidence": confidence,
        "max_drop_points": max_drop,
        "floor": accuracy_floor(teacher["val_accuracy"], profile, target),
        "state": state,
        "met": state == MET,
        "images_to_show": needed,
        "first_stage_over": first_over,
        "most_lost_stage": most_lost,
        "most_lost_points": most_lost_points,
        "verdict": verdict,
    }
