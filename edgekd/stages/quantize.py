"""Stage 3: INT8. NNCF inserts fake quantizers (after BatchNorm folding), the student is
fine-tuned through them with the distillation loss (QAT; or not at all, for PTQ), then stripped
to native PyTorch quantize/dequantize ops, which the pipeline exports as an ONNX QDQ graph.

QAT trains the folded weights with their gradients preconditioned by the folded BatchNorm scales
(edgekd.training.fold.precondition_folded: the steps SGD would take on the BatchNorm network with frozen
statistics), and is guarded: an attempt that ends worse than post-training quantization is rolled
back, retried once at a tenth of the learning rate, else the PTQ student is kept.

The scheme follows the target: signed symmetric activations (zero point 0) and per-channel weights
for TensorRT; on CPUs zero point 0 with unsigned post-ReLU tensors (what ONNX Runtime fuses into
QLinearConv), or asymmetric activations where a target asks for them. The pipeline measures accuracy
on the exported file in ONNX Runtime, i.e. on the artifact that ships, not on the fake-quantized model.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import replace

import torch
from torch import nn
from torch.utils.data import DataLoader

from edgekd import distributed
from edgekd.config import ActivationScheme, Profile, Target
from edgekd.data import stratified_subset
from edgekd.errors import TrainingDiverged
from edgekd.training.fold import fold_batchnorm, fold_scales, precondition_folded
from edgekd.training.losses import DistillationObjective
from edgekd.progress import info
from edgekd.runtimes.onnxruntime import int8_weight_bits
from edgekd.stages import StageContext, StageOutput
from edgekd.training.loop import TrainPlan, evaluate, fit


def use_eager_fake_quant() -> None:
    """NNCF's CPU fake-quant kernels are a C++ extension compiled on first use (minutes on two
    cores, and a timeout on a busy machine); its own fallback is torch.compile'd. Use the same
    reference arithmetic eagerly instead: identical results, no compiler in the loop."""
    from nncf.torch.quantization.extensions import QuantizedFunctionsCPU, QuantizedFunctionsCUDA
    from nncf.torch.quantization.reference import ReferenceQuantize, ReferenceBackendType

    executor = ReferenceQuantize(backend_type=ReferenceBackendType.TORCH)

    class EagerQuantizedFunctions:
        Quantize_forward = staticmethod(executor.forward)
        Quantize_backward = staticmethod(executor.backward)

    namespaces = [QuantizedFunctionsCPU]
    if torch.cuda.is_available():  # QAT on a GPU would compile NNCF's CUDA extension the same way
        namespaces.append(QuantizedFunctionsCUDA)
    for namespace in namespaces:
        if namespace._loaded_namespace is None:
            namespace._loaded_namespace = EagerQuantizedFunctions


def quantize_with_nncf(model: nn.Module, calibration: torch.utils.data.Dataset, samples: int,
                       scheme: ActivationScheme, batch_size: int = 128, seed: int = 0,
                       weight_bits: int | None = None) -> nn.Module:
    """Fold BatchNorms, then insert NNCF's INT8 fake quantizers calibrated on `samples` images,
    drawn at random with every class in proportion (never the first N of a class-sorted folder).
    `weight_bits`: 8, or 7 (half the INT8 range); by default what ONNX Runtime computes exactly on
    this CPU (`int8_weight_bits`), so every file made here is checked against what it computes."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    use_eager_fake_quant()
    folded, _ = fold_batchnorm(model)
    subset = stratified_subset(calibration, samples, seed)
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False)
    preset = nncf.QuantizationPreset.MIXED if scheme is ActivationScheme.ASYMMETRIC else nncf.QuantizationPreset.PERFORMANCE
    # one scale per activation tensor: ONNX Runtime's QLinearConv and TensorRT take no per-channel
    # activation scales (NNCF gives depthwise convolutions' inputs one per channel otherwise)
    per_tensor = AdvancedQuantizationParameters(activations_quantization_params=QuantizationParameters(per_channel=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = nncf.quantize(folded, nncf.Dataset(loader, lambda batch: batch[0]), preset=preset,
                                  subset_size=len(loader),  # NNCF counts dataset items: batches here
                                  advanced_parameters=per_tensor)
    if scheme is ActivationScheme.SYMMETRIC_SIGNED:
        force_signed_activations(quantized)
    elif scheme is ActivationScheme.ASYMMETRIC:
        pin_zero_points(quantized)
    if (weight_bits or int8_weight_bits()) == 7:
        halve_weight_ranges(quantized, next(iter(loader))[0])
    return quantized


@torch.no_grad()
def _weight_quantizers(quantized: nn.Module, example: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor]]:
    """(quantizer, the weight it quantizes) for each of NNCF's weight quantizers, found by running
    `example` and seeing which parameter each quantizer is handed. Not from the hook's name
    (`pre_hooks.body/0/conv2d/0__1.0`): NNCF names an op only by the modules called on the way to
    it, so a ModuleList's members lose their place, and the parsed path can name another module
    (issue 27's detector crashed there)."""
    from nncf.torch.quantization.layers import SymmetricQuantizer

    weights = {id(p): p for p in quantized.parameters() if p.dim() > 1}
    seen: dict[nn.Module, torch.Tensor] = {}

    def note(quantizer: nn.Module, args: tuple) -> None:  # returns None: the input is left as it is
        if args and id(args[0]) in weights:
            seen.setdefault(quantizer, args[0])

    handles = [module.register_forward_pre_hook(note) for module in quantized.modules()
               if isinstance(module, SymmetricQuantizer)]
    training = quantized.training
    try:
        quantized.eval()(example[:1])
    finally:
        for handle in handles:
            handle.remove()
        quantized.train(training)
    return [(module, weight) for module, weight in seen.items() if weight.shape[0] == module.scale_shape[0]]


def halve_weight_ranges(quantized: nn.Module, example: torch.Tensor) -> int:
    """Quantize every weight to 7 bits (+-63, the range NNCF's overflow fix uses) with the
    calibrated range kept: QAT trains with it, and the exported INT8 weights stay within +-63."""
    halved = 0
    for quantizer, _ in _weight_quantizers(quantized, example):
        quantizer._half_range = True
        quantizer.set_levels()
        halved += 1
    return halved


@torch.no_grad()
def clamp_to_weight_ranges(quantized: nn.Module, example: torch.Tensor) -> None:
    """Clip each weight to its quantizer's range before the native strip: the 7-bit quantizer
    clips there, but the exported 8-bit QuantizeLinear (same step, +-127) would not."""
    for quantizer, weight in _weight_quantizers(quantized, example):
        if quantizer.is_half_range:
            high = (abs(quantizer.scale) + quantizer.eps).reshape(weight.shape[0], *[1] * (weight.dim() - 1))
            weight.copy_(torch.maximum(torch.minimum(weight, high), -high))


def pin_zero_points(quantized: nn.Module) -> int:
    """Keep zero point 0 on asymmetric quantizers calibrated at input_low = 0 (post-ReLU tensors).

    Left trainable, QAT nudges input_low below 0, the zero point becomes 1, and ONNX Runtime can
    no longer drop the ReLU and fuse Conv+ReLU+Q into QLinearConv: that convolution then runs in
    float. Freezing input_low there keeps the graph fully INT8; the range still trains."""
    from nncf.torch.quantization.layers import AsymmetricQuantizer

    pinned = 0
    for module in quantized.modules():
        if isinstance(module, AsymmetricQuantizer) and float(module.input_low.detach().min()) == 0.0 \
                and float(module.input_low.detach().max()) == 0.0:
            module.input_low.requires_grad_(False)
            pinned += 1
    return pinned


def force_signed_activations(quantized: nn.Module) -> int:
    """TensorRT has no UINT8 Q/DQ: its explicit quantization wants signed INT8 with zero point 0
    everywhere, post-ReLU tensors included. NNCF's PERFORMANCE preset makes those unsigned, and
    its `signedness_to_force` constraint conflicts with its own hardware configs, so flip the
    calibrated quantizers to signed (same scale, range [-max, max]); QAT then adapts the scales."""
    from nncf.torch.quantization.layers import SymmetricQuantizer

    flipped = 0
    for module in quantized.modules():
        if isinstance(module, SymmetricQuantizer) and not module.signed:
            module.signed = True
            flipped += 1
    return flipped


def strip_to_qdq(quantized: nn.Module, example: torch.Tensor) -> nn.Module:
    """Native torch quantize/dequantize ops: what exports to ONNX QuantizeLinear/DequantizeLinear."""
    import nncf

    quantized = copy.deepcopy(quantized)
    clamp_to_weight_ranges(quantized, example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nncf.strip(quantized.eval(), do_copy=False, strip_format=nncf.StripFormat.NATIVE,
                          example_input=example[:1])


# QAT is kept only where it ends no further than this below the model it started from (the
# calibrated, post-training-quantized student) on validation: it is there to win accuracy back
GUARD_SLACK = 0.01
RETRY_LR_FACTOR = 0.1  # a rolled-back QAT is retried once at this share of the profile's lr


class QuantizeStage:
    name = "quantize"

    def enabled(self, profile: Profile) -> bool:
        return profile.quantize.enabled

    def config(self, profile: Profile, target: Target) -> object:
        return {"quantize": profile.quantize.model_dump(), "scheme": target.activation_scheme.value,
                "export": profile.export.model_dump(), "distill": profile.distill.model_dump(), "seed": profile.seed,
                "qat": "preconditioned-folded-sgd, guarded", "weight_bits": int8_weight_bits()}

    def run(self, model: nn.Module, ctx: StageContext) -> StageOutput:
        cfg = ctx.profile.quantize
        scheme = ctx.target.activation_scheme
        bits = int8_weight_bits()
        details: dict = {"method": cfg.method, "scheme": scheme.value, "epoch_losses": [], "weight_bits": bits}
        if bits == 7:
            details["weight_bits_why"] = ("this x86 CPU has no VNNI: ONNX Runtime's INT8 convolution saturates "
                                          "with 8-bit weights here, so weights use 7 bits (+-63)")
        scales = fold_scales(model)
        qat = cfg.method == "qat" and cfg.epochs > 0
        parent_val = distributed.broadcast(evaluate(model, ctx.data.val)) if qat else None
        quantized = quantize_with_nncf(model, ctx.data.train, cfg.calibration_samples, scheme, seed=ctx.profile.seed,
                                       weight_bits=bits)
        if qat:
            objective = DistillationObjective(ctx.teacher, ctx.profile.distill, ctx.teacher_logits).with_input_shape(ctx.data.input_shape)
            precondition = precondition_folded(quantized, scales)
            guard = self._guarded_qat(quantized, objective, ctx, precondition, parent_val)
            details["epoch_losses"] = guard["epoch_losses"]
            details["qat_guard"] = guard
            if guard["kept"] == "ptq":
                details.update({"extra_epochs": 0, "fake_quant_val_accuracy": guard["ptq_val_accuracy"],
                                "extension": "not extended: QAT was rolled back to the post-training-quantized model"})
            else:
                plan = self._plan(ctx, guard["lr"])
                details.update(self._train_to_the_floor(quantized, objective, plan, ctx, parent_val,
                                                        precondition=precondition))
        return StageOutput(strip_to_qdq(quantized, ctx.example), details, precision="int8")

    @staticmethod
    def _plan(ctx: StageContext, lr: float) -> TrainPlan:
        cfg = ctx.profile.quantize
        return TrainPlan(epochs=cfg.epochs, lr=lr, weight_decay=0.0, batch_size=ctx.profile.data.batch_size,
                         seed=ctx.profile.seed, warmup=0.05, workers=ctx.profile.data.workers, min_steps=cfg.min_steps)

    def _guarded_qat(self, quantized: nn.Module, objective: nn.Module, ctx: StageContext, precondition,
                     parent_val: float) -> dict:
        """QAT that cannot make the student worse than post-training quantization made it.

        An attempt is rolled back (the calibrated PTQ weights and ranges restored) when its loss
        is not finite, its epoch losses rise, or it ends more than GUARD_SLACK below the PTQ
        student on validation; it is then retried once at RETRY_LR_FACTOR of the learning rate,
        and if that fails too the PTQ student is kept, with its measured accuracy. Every attempt
        is in the returned record."""
        cfg = ctx.profile.quantize
        start = copy.deepcopy(quantized.state_dict())
        ptq_val = distributed.broadcast(evaluate(quantized, ctx.data.val))
        record: dict = {"parent_val_accuracy": parent_val, "ptq_val_accuracy": ptq_val, "attempts": []}
        for attempt, lr in enumerate((cfg.lr, cfg.lr * RETRY_LR_FACTOR)):
            problem, losses, accuracy = None, [], None
            try:
                log = fit(quantized, objective, ctx.data.train, self._plan(ctx, lr),
                          label="QAT" if attempt == 0 else "QAT retry",
                          checkpoint=ctx.progress(self.name) if attempt == 0 else None,
                          fingerprint=ctx.fingerprint, after_backward=precondition)
                losses = log.epoch_losses
                accuracy = distributed.broadcast(evaluate(quantized, ctx.data.val))
            except TrainingDiverged as error:
                problem = str(error)
            if problem is None and len(losses) > 1 and losses[-1] > losses[0]:
                problem = f"its epoch loss rose ({losses[0]:.4g} -> {losses[-1]:.4g})"
            if problem is None and accuracy < ptq_val - GUARD_SLACK:
                problem = (f"it ended at {100 * accuracy:.2f}% validation top-1, below the "
                           f"{100 * ptq_val:.2f}% it started from (post-training quantization)")
            record["attempts"].append({"lr": lr, "epoch_losses": losses, "val_accuracy": accuracy,
                                       "rolled_back": problem})
            if problem is None:
                record.update(kept="qat" if attempt == 0 else "qat retry", lr=lr, epoch_losses=losses)
                return record
            quantized.load_state_dict(start)
            then = (f"retrying at lr {lr * RETRY_LR_FACTOR:g}" if attempt == 0 else
                    f"keeping the post-training-quantized student ({100 * ptq_val:.2f}% validation top-1)")
            info(f"QAT at lr {lr:g} rolled back: {problem}; {then}")
        record.update(kept="ptq", lr=None, epoch_losses=[])
        return record

    def _train_to_the_floor(self, quantized: nn.Module, objective: nn.Module, plan: TrainPlan,
                            ctx: StageContext, parent_val: float | None, precondition=None) -> dict:
        """While the INT8 student is below the accuracy budget on validation, train it longer,
        one epoch at a time at half the learning rate, up to the profile's cap; an extra epoch
        that lowers validation top-1 is rolled back and ends the extension. Not when its FP32
        parent was already below: the loss is an earlier stage's, which QAT does not win back
        (default run: two extra epochs moved 88.93% to 88.92% against a 91.73% floor)."""
        cfg = ctx.profile.quantize
        if ctx.accuracy_floor is None or cfg.max_extra_epochs == 0:
            return {}
        val_accuracy = distributed.broadcast(evaluate(quantized, ctx.data.val))
        if parent_val is not None and parent_val < ctx.accuracy_floor and val_accuracy < ctx.accuracy_floor:
            why = (f"not extended: its FP32 parent was already below the accuracy budget "
                   f"({100 * parent_val:.2f}% < {100 * ctx.accuracy_floor:.2f}% on validation)")
            info(f"QAT: {why}")
            return {"extra_epochs": 0, "fake_quant_val_accuracy": val_accuracy, "parent_val_accuracy": parent_val,
                    "extension": why}
        extra = 0
        facts: dict = {}
        while val_accuracy < ctx.accuracy_floor and extra < cfg.max_extra_epochs:
            extra += 1
            info(f"QAT: validation top-1 {100 * val_accuracy:.2f}% is below the accuracy budget's "
                 f"{100 * ctx.accuracy_floor:.2f}%; extra epoch {extra}/{cfg.max_extra_epochs}")
            longer = replace(plan, epochs=1, lr=plan.lr / 2, weight_decay=0.0, seed=plan.seed + 100 + extra,
                             warmup=0.05, min_steps=cfg.min_steps // 2)
            before = copy.deepcopy(quantized.state_dict())
            try:
                fit(quantized, objective, ctx.data.train, longer, label=f"QAT extra {extra}", after_backward=precondition)
                accuracy = distributed.broadcast(evaluate(quantized, ctx.data.val))
            except TrainingDiverged:
                accuracy = None
            if accuracy is None or accuracy < val_accuracy:
                quantized.load_state_dict(before)
                facts["extension"] = (f"extra epoch {extra} rolled back: validation top-1 "
                                      f"{'diverged' if accuracy is None else f'{100 * accuracy:.2f}%'} "
                                      f"after {100 * val_accuracy:.2f}% before it")
                info(f"QAT: {facts['extension']}")
                break
            val_accuracy = accuracy
        return {"extra_epochs": extra, "fake_quant_val_accuracy": val_accuracy, **facts}
