"""The accuracy budget: how far the student's top-1 may fall below its teacher's.

Judged on the validation split (the test split is only reported), so the same numbers that
decided the recipe also decide the verdict, and no choice is made by looking at test.
"""

from __future__ import annotations

from edgekd.config import Profile, Target


def allowed_drop(profile: Profile, target: Target) -> float:
    """Points of top-1 the student may lose: the profile's budget, tightened by the target's."""
    if target.max_accuracy_drop is None:
        return profile.accuracy.max_drop
    return min(profile.accuracy.max_drop, target.max_accuracy_drop)


def accuracy_floor(teacher_val_accuracy: float, profile: Profile, target: Target) -> float:
    """The lowest validation top-1 (0..1) the student may end with."""
    return teacher_val_accuracy - allowed_drop(profile, target) / 100.0


def accuracy_verdict(records: list[dict], profile: Profile, target: Target) -> dict:
    """Whether the final student keeps the teacher's validation top-1 within the budget; when it
    does not, which stage first fell below the floor, with the numbers."""
    teacher, final = records[0], records[-1]
    max_drop = allowed_drop(profile, target)
    floor = accuracy_floor(teacher["val_accuracy"], profile, target)
    drop = 100.0 * (teacher["val_accuracy"] - final["val_accuracy"])
    met = final["val_accuracy"] >= floor - 1e-12
    first_below = next((r["name"] for r in records[1:] if r["val_accuracy"] < floor - 1e-12), None)
    change = f"lost {drop:.2f} points" if drop >= 0 else f"gained {-drop:.2f} points"
    numbers = (f"student ({final['name']}) {100 * final['val_accuracy']:.2f}% vs teacher "
               f"{100 * teacher['val_accuracy']:.2f}% on validation: {change}, {max_drop:g} allowed")
    if met:
        verdict = f"accuracy MET: {numbers}"
    else:
        where = f"; it fell below {100 * floor:.2f}% at the {first_below} stage" if first_below else ""
        verdict = f"accuracy MISSED: {numbers}{where}"
    return {
        "split": "validation",
        "teacher": teacher["val_accuracy"],
        "student": final["val_accuracy"],
        "drop_points": drop,
        "max_drop_points": max_drop,
        "floor": floor,
        "met": met,
        "first_stage_below": first_below,
        "verdict": verdict,
    }
