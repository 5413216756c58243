"""The export step after every stage: the stage's model as an ONNX file, fitted to the target's
runtime (INT8), and checked against the model it came from.

The check runs ONNX Runtime on real images. FP32 must match within the profile's tolerance. The
all-INT8 file (its quantizers placed for the target's runtime) must match the fake-quantized model
within the INT8 tolerance and top-1 agreement. A file that fails is refused with one line saying
by how much (`ExportMismatch`), before any accuracy is measured on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from edgekd.errors import EdgekdError
from edgekd.export.onnx_file import check_parity, export_onnx
from edgekd.runfolder import INT8_ONNX

if TYPE_CHECKING:  # the stages call this module, not the other way round
    from edgekd.stages import StageContext


class ExportMismatch(EdgekdError):
    """The exported file does not compute what the model it came from computes."""


@dataclass(frozen=True)
class ExportedFile:
    path: Path
    details: dict  # for the stage's record: `parity`, and for INT8 the `runtime_fit` facts


def export_checked(model: nn.Module, ctx: "StageContext", stage: str, precision: str,
                   parent_onnx: Path | None = None) -> ExportedFile:
    """FP32 to `stages/<stage>.onnx`; INT8 to the run's student file: placed for the target's
    runtime, checked all-INT8, then with the layers INT8 runs slower kept float where the whole file
    is faster (timed against `parent_onnx`, the FP32 file it was quantized from)."""
    path = ctx.run.path(INT8_ONNX if precision == "int8" else f"stages/{stage}.onnx")
    export_onnx(model, ctx.example, path, ctx.profile.export.opset)
    if precision != "int8":
        return ExportedFile(path, {"parity": check_export(model, ctx, path, precision, stage)})
    from edgekd.export.int8_fit import keep_slow_layers_float, place_for_target
    from edgekd.runtimes.onnxruntime import store_int8_weights

    store_int8_weights(path)
    fit = place_for_target(path, ctx)
    parity = check_export(model, ctx, path, precision, stage)
    fit.update(keep_slow_layers_float(path, parent_onnx, ctx))
    if fit.get("layers_kept_float"):
        parity["mixed"] = check_export(model, ctx, path, precision, stage, enforce=False)
    return ExportedFile(path, {"runtime_fit": fit, "parity": parity})


def check_export(model: nn.Module, ctx: "StageContext", path: Path, precision: str, stage: str,
                 enforce: bool = True) -> dict:
    """Run the file in ONNX Runtime on real images and compare with the model it came from (see the
    module docstring). `enforce=False`: a mixed file computes more exactly than the fake-quantized
    model (its float layers skip the rounding), so it is not that model; its agreement is recorded,
    and its accuracy, measured on it right after, is what the accuracy budget judges."""
    export = ctx.profile.export
    int8 = precision == "int8"
    atol = export.int8_atol if int8 else export.atol
    parity = check_parity(model, path, ctx.example, atol, rtol=export.int8_rtol if int8 else export.rtol)
    agreement_needed = export.min_top1_agreement if int8 else 0.0
    if enforce and (not parity.ok or parity.decided_agreement < agreement_needed):
        raise ExportMismatch(
            f"{stage}: the exported {precision.upper()} file {path.name} disagrees with the model it came from: "
            f"max |logit difference| {parity.max_abs_diff:.3g} (tolerance {parity.atol:.3g}), top-1 agreement "
            f"{100 * parity.decided_agreement:.1f}% on the {parity.decided} of {parity.samples} images that are no "
            f"near tie (needed {100 * agreement_needed:.0f}%)")
    return parity.as_dict()
