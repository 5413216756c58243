"""A stage's record: what its exported file computes, checked, and how accurate it is.

Every stage of the chain, the teacher included, ends the same way: its model is exported, the file
is checked against the model (`edgekd.export.stage_file`), and top-1 is measured on the file, so
every accuracy in a report is the accuracy of a file that exists. The record is frozen: a resumed
stage is the same record with `resumed=True`, and the report's row is the record plus the file's
latency for the run's target (which belongs to file, target and machine, not to the stage).
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path

from torch import nn

from edgekd.stages import StageContext

EVAL_THREADS = 2  # ONNX Runtime threads for measuring accuracy on the exported files


@dataclass(frozen=True)
class StageRecord:
    name: str
    precision: str  # "fp32" or "int8"
    accuracy: float  # top-1 on the test split, measured on the file
    test_images: int
    test_correct: str  # per test image, packed (verify.accuracy_budget.pack_hits): the paired verdict reads it
    val_accuracy: float  # top-1 on the validation split, which the stages chose on
    params: int
    macs: int
    size_bytes: int
    onnx: str  # the file, relative to the run folder
    seconds: float
    details: dict = field(default_factory=dict)  # stage-specific facts; `parity` is the export check
    resumed: bool = False

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> "StageRecord":
        """A record as the run folder saved it (its `resumed` flag is not kept there)."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in saved.items() if key in known})

    @classmethod
    def from_folder(cls, saved: dict | None) -> "StageRecord | None":
        """The completed stage's record, marked resumed; None (the stage runs again) where there is
        none, or where the saved one lacks a field (an older edgekd's, or a hand-edited marker)."""
        needed = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        if saved is None or not needed <= saved.keys():
            return None
        return replace(cls.from_dict(saved), resumed=True)

    def as_saved(self) -> dict:
        """What the run folder keeps: the record without this run's `resumed` flag."""
        saved = self.as_dict()
        saved.pop("resumed")
        return saved


def record_stage(name: str, model: nn.Module, ctx: StageContext, *, precision: str, counts: tuple[int, int],
                 seconds: float, details: dict, parent_onnx: Path | None = None) -> StageRecord:
    """Export `model`, check the file (edgekd.export.stage_file) and measure top-1 on it:
    validation decides, test is reported. No latency here (see the module docstring)."""
    from edgekd.export.stage_file import export_checked
    from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner
    from edgekd.training.loop import correct_onnx
    from edgekd.verify.accuracy_budget import pack_hits

    exported = export_checked(model, ctx, name, precision, parent_onnx)
    runner = OnnxRuntimeRunner(exported.path, threads=EVAL_THREADS)
    val_hits, test_hits = correct_onnx(runner, ctx.data.val), correct_onnx(runner, ctx.data.test)
    return StageRecord(
        name=name,
        precision=precision,
        accuracy=float(test_hits.mean()) if len(test_hits) else 0.0,
        test_images=len(test_hits),
        test_correct=pack_hits(test_hits),
        val_accuracy=float(val_hits.mean()),
        params=counts[1],
        macs=counts[0],
        size_bytes=exported.path.stat().st_size,
        onnx=ctx.run.relative(exported.path),
        seconds=round(seconds, 2),
        details={**details, **exported.details},
    )

