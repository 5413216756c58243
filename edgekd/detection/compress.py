"""`edgekd compress --task detect`: teacher -> distill -> prune -> INT8 -> export -> verify, for a detector.

The classification chain's run folder, resume, report and exit codes, with detection's own parts:
a COCO / YOLO / synthetic data source (`edgekd.detection.sources`), training through
`edgekd.training.loop.fit`, mAP from pycocotools, and an accuracy budget in mAP points judged by a paired
image bootstrap (`edgekd.detection.verdict`). Every stage's mAP is measured on the ONNX file it
exported, in ONNX Runtime; box decoding and NMS run outside the network, and are timed apart.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from edgekd import __version__, checkpoints, distributed
from edgekd.config import Profile, Target, fingerprint, load_profile, load_target
from edgekd.detection.sources import DetectionData, load_detection_data
from edgekd.errors import BadInputError, EdgekdError, budget_exit_code
from edgekd.progress import info
from edgekd.runfolder import FP32_ONNX, INT8_ONNX, RunFolder, RunResult, atomic_write_bytes, atomic_write_json, claim_on_rank0, resumable
from edgekd.training.loop import TrainPlan

REPORT = "report.json"
EXAMPLE_IMAGES = 64  # choice-split images for tracing, export checks and calibration of the placement


@dataclass
class DetectOptions:
    target: str = "jetson-orin"
    profile: str = "detect"
    data: str | None = None
    image_size: int | None = None  # default: the profile's [detect] image_size
    teacher: str | None = None  # a detector file (`edgekd.detection.model.save_detector`: state dict + .json)
    seed: int | None = None
    run_dir: Path | None = None
    cache_dir: Path | None = None
    measure_here: bool = False
    resume: bool = False
    overwrite: bool = False

    def as_dict(self) -> dict:
        return {"task": "detect", "target": self.target, "profile": self.profile, "data": self.data,
                "image_size": self.image_size, "teacher": self.teacher, "seed": self.seed,
                "cache_dir": str(Path(self.cache_dir).absolute()) if self.cache_dir is not None else None,
                "measure_here": self.measure_here}


@dataclass
class _Run:
    """What every stage reads: the validated config, the data, the folder, and the frozen teacher."""

    profile: Profile
    target: Target
    data: DetectionData
    run: RunFolder
    example: torch.Tensor
    teacher: nn.Module | None = None

    @property
    def num_classes(self) -> int:
        return len(self.data.classes)


def compress_detector(options: DetectOptions) -> RunResult:
    return resumable(lambda claimed: _compress(options, claimed), options.run_dir)


def _profile(options: DetectOptions) -> Profile:
    profile = load_profile(options.profile)
    updates = {}
    if options.seed is not None:
        updates["seed"] = options.seed
    if options.image_size is not None:
        if options.image_size % 32 or options.image_size < 32:
            raise BadInputError(f"--image-size {options.image_size}: a detector's input side must be a multiple of 32 "
                                "(its backbone's stride), at least 32")
        updates["detect"] = profile.detect.model_copy(update={"image_size": options.image_size})
    return profile.model_copy(update=updates)


def _compress(options: DetectOptions, claimed: dict) -> RunResult:
    from edgekd.pipeline import default_run_dir
    from edgekd.stages.teacher import default_cache_dir

    if distributed.world_size() > 1:
        raise BadInputError("--task detect runs in one process; torchrun is for classification only so far")
    target = load_target(options.target)
    profile = _profile(options)
    cfg = profile.detect
    cache_dir = Path(options.cache_dir or default_cache_dir())
    teacher_file = _teacher_file(options.teacher)
    data = load_detection_data(options.data, cfg.image_size, bad_boxes=cfg.bad_boxes,
                               synthetic_images=cfg.images_made, choice_fraction=cfg.choice_fraction,
                               seed=profile.seed, cache_dir=cache_dir, synthetic_split=cfg.synthetic_split)
    run, claimed["lock"] = claim_on_rank0(options.run_dir, default_run_dir(target.name),
                                          resume=options.resume, overwrite=options.overwrite)
    claimed["run_dir"] = run.root
    options = replace(options, run_dir=run.root)
    checkpoints.refuse_unsafe(run.root)
    atomic_write_json(run.path("options.json"), options.as_dict())
    atomic_write_json(run.path("config.json"), {"target": target.model_dump(mode="json"),
                                                "profile": profile.model_dump(mode="json")})
    started = time.perf_counter()
    example = torch.stack([data.choice[i][0] for i in range(min(EXAMPLE_IMAGES, len(data.choice)))])
    ctx = _Run(profile, target, data, run, example)
    teacher, teacher_fp, origin = _obtain_teacher(ctx, teacher_file, cache_dir)
    ctx.teacher = teacher
    obtained = time.perf_counter() - started  # the teacher stage's time: training it (cold) or loading it
    records = [_stage(ctx, "teacher", fingerprint("teacher", teacher_fp, data.key(), profile.export),
                      lambda: (teacher, "fp32", {"origin": origin}), like=None, extra_seconds=obtained)]
    chain = fingerprint(teacher_fp, data.key(), profile.seed)
    student = None
    for name, config, run_stage in _stages(ctx):
        chain = fingerprint(chain, name, config)
        record, student = _stage_with_model(ctx, name, chain,
                                            lambda s=run_stage, m=student, fp=chain: s(ctx, m, records, fp))
        records.append(record)
    report = _finish(ctx, records, options, time.perf_counter() - started)
    return RunResult(report, run.root, budget_exit_code(report["budget"]))


# ---------------------------------------------------------------- the teacher


def _teacher_file(path: str | None) -> Path | None:
    if path is None:
        return None
    from edgekd.models.teacher_files import require_regular_file

    file = Path(path)
    if not file.exists():
        raise BadInputError(f"--teacher {file}: not found")
    require_regular_file(file)
    if not Path(f"{file}.json").is_file():
        raise BadInputError(f"--teacher {file}: a detector file needs its architecture beside it, {file}.json "
                            "(edgekd.detection.model.save_detector writes both)")
    return file


def _obtain_teacher(ctx: _Run, teacher_file: Path | None, cache_dir: Path) -> tuple[nn.Module, str, dict]:
    from edgekd.detection.model import build_detector, load_detector, save_detector, teacher_spec
    from edgekd.detection.train import DetectionObjective, train_detector
    from edgekd.runfolder import sha256

    if teacher_file is not None:
        try:
            model = load_detector(teacher_file)
        except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:
            raise BadInputError(f"--teacher {teacher_file}: not a detector edgekd can load "
                                f"({type(err).__name__}: {str(err).splitlines()[0][:160]})") from None
        if model.spec.num_classes != ctx.num_classes:
            raise BadInputError(f"--teacher {teacher_file}: detects {model.spec.num_classes} classes, the data has "
                                f"{ctx.num_classes} ({', '.join(ctx.data.classes)})")
        digest = sha256(teacher_file)
        return model.eval(), digest, {"kind": "file", "path": str(teacher_file), "sha256": digest}
    cfg = ctx.profile.detect
    spec = teacher_spec(ctx.num_classes)
    key = fingerprint("detect-teacher", spec.to_json(), ctx.data.key(), cfg.teacher_epochs, cfg.teacher_lr,
                      cfg.batch_size, cfg.weight_decay, ctx.profile.seed)
    cached = cache_dir / f"detect-teacher-{key}.pt"
    if cached.is_file() and Path(f"{cached}.json").is_file():
        info("teacher: cached in ", user_text=str(cached))
        return load_detector(cached), key, {"kind": "built-in", "cached": str(cached)}
    info(f"teacher: training the built-in detector ({cfg.teacher_epochs} epochs, {len(ctx.data.train)} images)")
    torch.manual_seed(ctx.profile.seed)
    model = build_detector(spec)
    started = time.perf_counter()
    train_detector(model, DetectionObjective(ctx.num_classes), ctx.data.train,
                   _plan(ctx.profile, cfg.teacher_epochs, cfg.teacher_lr), label="teacher",
                   checkpoint=ctx.run.path("progress/teacher.pt"), fingerprint=key)
    from edgekd.runfolder import disk_errors

    with disk_errors(cache_dir):
        cache_dir.mkdir(parents=True, exist_ok=True)
        save_detector(model, cached)
    ctx.run.path("progress/teacher.pt").unlink(missing_ok=True)
    return model.eval(), key, {"kind": "built-in", "cached": str(cached), "train_seconds": round(time.perf_counter() - started, 1)}


def _plan(profile: Profile, epochs: int, lr: float, weight_decay: float | None = None) -> TrainPlan:
    cfg = profile.detect
    return TrainPlan(epochs=epochs, lr=lr, weight_decay=cfg.weight_decay if weight_decay is None else weight_decay,
                     batch_size=cfg.batch_size, seed=profile.seed)


# ---------------------------------------------------------------- the student's stages


def _stages(ctx: _Run):
    """(name, what its result depends on, run) for each enabled stage, in chain order."""
    p = ctx.profile
    scheme = ctx.target.activation_scheme.value
    stages = [("distill", (p.detect, p.mixed_precision), _distill)]
    if p.prune.enabled and p.prune.ratio > 0:
        stages.append(("prune", (p.prune, p.detect, p.accuracy), _prune))
    if p.quantize.enabled:
        stages.append(("quantize", (p.quantize, scheme, p.export), _quantize))
    return stages


def _distillation(ctx: _Run, student: nn.Module):
    from edgekd.detection.distill import DetectionDistillation, DetectionKDWeights

    cfg = ctx.profile.detect
    return DetectionDistillation(ctx.teacher, student.features(ctx.example[:1]).shape[1],
                                 DetectionKDWeights(feature=cfg.feature_weight, score=cfg.score_weight))


def _distill(ctx: _Run, _: nn.Module | None, records: list[dict], fp: str):
    from edgekd.detection.model import build_detector, student_spec
    from edgekd.detection.train import train_detector

    cfg = ctx.profile.detect
    torch.manual_seed(ctx.profile.seed)
    student = build_detector(student_spec(ctx.num_classes))
    info(f"distill: {cfg.epochs} epochs from the teacher (features {cfg.feature_weight:g}, scores {cfg.score_weight:g})")
    train_detector(student, _distillation(ctx, student), ctx.data.train, _plan(ctx.profile, cfg.epochs, cfg.lr),
                   label="distill", checkpoint=ctx.run.path("progress/distill.pt"), fingerprint=fp)
    return student.eval(), "fp32", {"spec": json.loads(student.spec.to_json())}


def _choice_metric(ctx: _Run, model: nn.Module) -> float:
    from edgekd.detection.evaluate import evaluate

    metrics = evaluate(model, ctx.data.choice)
    return 100.0 * getattr(metrics, ctx.profile.detect.metric)


def _prune(ctx: _Run, student: nn.Module, records: list[dict], fp: str):
    from edgekd.detection.prune import prune_detector
    from edgekd.detection.train import train_detector
    from edgekd.verify.accuracy_budget import allowed_drop

    cfg = ctx.profile.prune
    floor = records[0]["choice"][ctx.profile.detect.metric] - allowed_drop(ctx.profile, ctx.target)
    parent_score = records[-1]["choice"][ctx.profile.detect.metric]
    pruned = copy.deepcopy(student)
    shrink = prune_detector(pruned, ctx.example, cfg, ctx.data.train, ctx.profile.seed)
    epochs = cfg.epochs_per_step * cfg.steps
    info(f"prune: {shrink['macs_before'] / 1e6:.1f} M -> {shrink['macs_after'] / 1e6:.1f} M MACs, "
         f"recovering {epochs} epochs with the teacher")
    train_detector(pruned, _distillation(ctx, pruned), ctx.data.train, _plan(ctx.profile, epochs, cfg.lr),
                   label="prune", checkpoint=ctx.run.path("progress/prune.pt"), fingerprint=fp)
    score = _choice_metric(ctx, pruned.eval())
    details = {"pruning": shrink, "choice_score": score, "floor": floor}
    if score < floor <= parent_score:  # the guard: pruning may not take a student under the budget that was within it
        details["undone"] = (f"the pruned detector scored {score:.2f} {ctx.profile.detect.metric} points on the choice "
                             f"split, under the floor {floor:.2f} its parent ({parent_score:.2f}) was above; "
                             "the unpruned student goes on")
        info(f"prune: undone ({details['undone']})")
        return student, "fp32", details
    return pruned.eval(), "fp32", details


def _quantize(ctx: _Run, student: nn.Module, records: list[dict], fp: str):
    from edgekd.detection.quantize import qat_detector, quantize_detector
    from edgekd.errors import TrainingDiverged

    cfg, metric = ctx.profile.quantize, ctx.profile.detect.metric
    scheme = ctx.target.activation_scheme
    samples = min(cfg.calibration_samples, len(ctx.data.train))
    ptq = quantize_detector(student, ctx.data.train, samples, scheme, seed=ctx.profile.seed)
    ptq_score = _choice_metric(ctx, ptq)
    details = {"scheme": scheme.value, "calibration_images": samples, "ptq_choice_score": ptq_score, "kept": "ptq"}
    chosen = ptq
    if cfg.method == "qat" and cfg.epochs > 0:
        qat = copy.deepcopy(ptq)
        try:
            log = qat_detector(qat, student, ctx.data.train, _plan(ctx.profile, cfg.epochs, cfg.lr, 0.0), label="QAT")
            qat_score = _choice_metric(ctx, qat)
        except TrainingDiverged as err:
            log, qat_score = None, None
            details["qat_diverged"] = str(err)
        details.update(qat_choice_score=qat_score, qat_epochs=cfg.epochs,
                       qat_losses=[round(x, 4) for x in getattr(log, "epoch_losses", [])] if log else None)
        if qat_score is not None and qat_score >= ptq_score:
            chosen, details["kept"] = qat, "qat"
        info(f"quantize: PTQ {ptq_score:.2f}, QAT {qat_score if qat_score is None else round(qat_score, 2)} "
             f"{metric} on the choice split; keeping {details['kept'].upper()}")
    return chosen, "int8", details


# ---------------------------------------------------------------- recording a stage


def _stage_with_model(ctx: _Run, name: str, fp: str, run_stage) -> tuple[dict, nn.Module | None]:
    from edgekd.detection.model import build_detector, student_spec

    like = build_detector(student_spec(ctx.num_classes))
    holder: dict = {}

    def produce():
        model, precision, details = run_stage()
        holder["model"] = model
        return model, precision, details

    record = _stage(ctx, name, fp, produce, like=like)
    model = holder.get("model")
    if model is None and record["precision"] == "fp32":  # resumed: the stage's saved model
        model = checkpoints.load_model(ctx.run.root / f"checkpoints/{name}.pt", like=like).eval()
    return record, model


def _stage(ctx: _Run, name: str, fp: str, produce, like: nn.Module | None, extra_seconds: float = 0.0) -> dict:
    done = ctx.run.completed(name, fp, needs="detections")
    if done is not None:
        info(f"{name}: complete in ", user_text=f"{ctx.run.root}, skipped")
        return {**done, "resumed": True}
    started = time.perf_counter()
    model, precision, details = produce()
    seconds = time.perf_counter() - started + extra_seconds
    record, files = _record(ctx, name, model, precision, details, seconds)
    if precision == "fp32" and like is not None:
        path = ctx.run.path(f"checkpoints/{name}.pt")
        checkpoints.save_model(model, path)
        files.append(path)
    ctx.run.mark_done(name, fp, record, files)
    ctx.run.path(f"progress/{name}.pt").unlink(missing_ok=True)
    return {**record, "resumed": False}


def _record(ctx: _Run, name: str, model: nn.Module, precision: str, details: dict, seconds: float) -> tuple[dict, list[Path]]:
    """Export, check the file against the model, and measure mAP on the file in ONNX Runtime (choice and
    reported splits); the reported split's detections are kept for the verdict."""
    from edgekd.detection.evaluate import coco_map, predict_detections
    from edgekd.metrics import count
    from edgekd.export.onnx_file import check_parity
    from edgekd.runtimes.onnxruntime import OnnxRuntimeRunner

    export = ctx.profile.export
    if precision == "int8":
        from edgekd.detection.quantize import calibration_array, export_int8

        path = ctx.run.path(INT8_ONNX)
        details = {**details, **export_int8(model, ctx.example, path, calibration_array(ctx.data.train, 128, ctx.profile.seed))}
        parity = check_parity(model, path, ctx.example, export.int8_atol, rtol=export.int8_rtol)
    else:
        from edgekd.detection.quantize import export_fp32

        path = export_fp32(model, ctx.example, ctx.run.path(f"stages/{name}.onnx"))
        parity = check_parity(model, path, ctx.example, export.atol, rtol=export.rtol)
    if not parity.ok:
        raise EdgekdError(f"{name}: the exported {precision.upper()} file {path.name} disagrees with the model it came "
                          f"from: max |output difference| {parity.max_abs_diff:.3g} (tolerance {parity.atol:.3g})")
    runner = OnnxRuntimeRunner(path, threads=2)
    k = ctx.num_classes
    scores = {}
    for role, split in (("choice", ctx.data.choice), ("reported", ctx.data.reported)):
        found = predict_detections(lambda x: runner.run(x.numpy()), split)
        scores[role] = {key: (None if v is None else 100.0 * v) if key not in ("images", "boxes") else v
                        for key, v in coco_map(split.samples, found, k).as_dict().items()}
        if role == "reported":
            detections_path = ctx.run.path(f"stages/{name}.detections.json")
            atomic_write_json(detections_path, [{key: torch.as_tensor(d[key]).tolist() for key in ("boxes", "scores", "labels")}
                                                for d in found])
    macs, params = count(model, ctx.example) if precision == "fp32" else (None, None)  # INT8: its parent's, later
    cfg = ctx.profile.detect
    info(f"{name}: {cfg.metric} {scores['reported'][cfg.metric]:.2f} (reported), {scores['choice'][cfg.metric]:.2f} (choice) "
         f"on {path.name}")
    record = {
        "name": name, "precision": precision, "metric": cfg.metric,
        "choice": scores["choice"], "reported": scores["reported"],
        "macs": macs, "params": params, "size_bytes": path.stat().st_size,
        "onnx": ctx.run.relative(path), "detections": ctx.run.relative(detections_path),
        "seconds": round(seconds, 2), "details": {**details, "parity": parity.as_dict()},
    }
    return record, [path, detections_path]


# ---------------------------------------------------------------- verify and report


def _finish(ctx: _Run, records: list[dict], options: DetectOptions, seconds: float) -> dict:
    from edgekd.detection.verdict import map_verdict, postprocess_latency
    from edgekd.measure.target_latency import target_latency
    from edgekd.runtimes import backend
    from edgekd.verify.latency_budget import budget_verdict, join_accuracy

    run, target = ctx.run, ctx.target
    int8 = next((r for r in records if r["precision"] == "int8"), None)
    for parent, r in zip(records, records[1:]):
        if r["macs"] is None:  # a quantized graph counts as the FP32 graph it was made from
            r["macs"], r["params"] = parent["macs"], parent["params"]
    records = [{**r, **target_latency(run.root / r["onnx"], target, label=f"{r['name']} latency",
                                      measure_here=options.measure_here).as_record()} for r in records]
    final = records[-1]
    fp32 = [r for r in records if r["precision"] == "fp32" and r["name"] != "teacher"][-1]
    atomic_write_bytes(run.path(FP32_ONNX), (run.root / fp32["onnx"]).read_bytes())
    artifacts = {"student_fp32_onnx": FP32_ONNX, "student_int8_onnx": int8["onnx"] if int8 else None}
    shipped, judged = None, final
    if int8 is not None:  # INT8 or FP32, whichever runs faster on the target, and the runtime's own files
        from edgekd.verify.ship import ship

        shipped, judged, files = ship(run.root, target, fp32, final, options.measure_here)
        artifacts.update(files)
    budget = budget_verdict(target, judged["latency_ms"], judged["size_bytes"], judged["latency_note"])
    if shipped and shipped["warning"]:
        budget["verdict"] += f". {shipped['warning']}"
    join_accuracy(budget, map_verdict(ctx, [*records[:-1], judged] if judged is not final else records),
                  ctx.profile.accuracy.not_shown)
    tensorrt = ort_format = None
    if int8 is not None and backend(target).needs_engine:
        from edgekd.export.tensorrt_engine import prepare_engine

        tensorrt = prepare_engine(run.root, target, run.root / int8["onnx"], None)
        artifacts["build_script"] = tensorrt["build_script"]
    if int8 is not None:
        from edgekd.export.ort_format import write_ort_format

        ort_format = write_ort_format(run.root, target, int8["onnx"], ctx.example.numpy(), ctx.profile.export)
        artifacts["student_int8_ort"] = ort_format["file"] if ort_format else None
    report = {
        "status": "complete",
        "task": "detect",
        "run_id": run.run_id,
        "edgekd_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "target": {"name": target.name, "runtime": target.runtime.value, "precision": target.precision.value,
                   "activations": target.activation_scheme.value, "batch": target.input.batch,
                   "threads": target.threads, "device": target.device.label},
        "profile": ctx.profile.name,
        "dataset": ctx.data.as_dict(),
        "stages": records,
        "student": {"stage": judged["name"], "onnx": judged["onnx"]},
        "shipped": shipped,
        "postprocess": postprocess_latency(run.root / judged["onnx"], ctx),
        "budget": budget,
        "tensorrt": tensorrt,
        "ort_format": ort_format,
        "artifacts": {**artifacts, "report_json": REPORT},
        "seconds": round(seconds, 1),
    }
    atomic_write_json(run.path(REPORT), report)
    return report
