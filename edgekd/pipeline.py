"""`edgekd compress`: teacher -> distill -> prune -> quantize -> export -> verify, in one run folder.

Each stage is fingerprinted by its inputs and config; a completed stage is recorded atomically,
so `--resume` skips it and a changed profile reruns only what it changed. Under torchrun every
rank trains, rank 0 alone evaluates and writes, and the others wait for it.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from edgekd import __version__, distributed
from edgekd.config import Profile, Runtime, Target, fingerprint, load_profile, load_target
from edgekd.data import DataBundle, load_data
from edgekd.errors import EdgekdError, ExitCode, Interrupted
from edgekd.models import create_model, require_architecture
from edgekd.onnx_export import check_parity, export_onnx
from edgekd.progress import info
from edgekd.runfolder import RunFolder, atomic_torch_save, atomic_write_json
from edgekd.stages import StageContext, StageOutput
from edgekd.stages.distill import DistillStage
from edgekd.stages.prune import PruneStage, count
from edgekd.stages.quantize import QuantizeStage
from edgekd.stages.teacher import Teacher, TeacherSource, default_cache_dir, obtain_teacher
from edgekd.train import accuracy
from edgekd.verify import host_latency, target_latency

STAGES = (DistillStage(), PruneStage(), QuantizeStage())  # in this order; nothing prunes after QAT
FP32_ONNX = "student.fp32.onnx"
REPORT = "report.json"
REFERENCE_ARCH = "edgekd_resnet"  # the fixed model every run also times, to normalise latency


@dataclass
class CompressOptions:
    """Everything `edgekd compress` needs, after the CLI and a resumed run's saved options merge."""

    target: str = "jetson-orin"
    profile: str = "default"
    data: str | None = None
    image_size: int = 32
    teacher: TeacherSource = field(default_factory=TeacherSource)
    student: str | None = None
    width: float | None = None
    seed: int | None = None
    run_dir: Path | None = None
    cache_dir: Path | None = None

    def resolved_profile(self) -> Profile:
        profile = load_profile(self.profile)
        student = profile.student.model_copy(update={k: v for k, v in
                                                     {"arch": self.student, "width": self.width}.items() if v is not None})
        updates = {"student": student}
        if self.seed is not None:
            updates["seed"] = self.seed
        return profile.model_copy(update=updates)

    def as_dict(self) -> dict:
        return {
            "target": self.target, "profile": self.profile, "data": self.data, "image_size": self.image_size,
            "teacher": self.teacher.path_or_name, "teacher_arch": self.teacher.arch,
            "teacher_weights": self.teacher.weights, "student": self.student, "width": self.width,
            "seed": self.seed,
        }


def default_run_dir(target: str) -> Path:
    return Path("runs") / f"{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{target}"


@dataclass
class CompressResult:
    report: dict
    run_dir: Path
    exit_code: ExitCode


def _stage_record(name: str, model: nn.Module | None, output: StageOutput | None, ctx: StageContext,
                  onnx_path: Path, seconds: float, macs_params: tuple[int, int], label: str) -> dict:
    target_lat = target_latency(onnx_path, ctx.target, label=f"{label} latency")
    acc = output.accuracy if output is not None and output.accuracy is not None else accuracy(model, ctx.data.test)
    return {
        "name": name,
        "accuracy": acc,
        "params": macs_params[1],
        "macs": macs_params[0],
        "size_bytes": onnx_path.stat().st_size,
        "latency_ms": target_lat.latency.as_dict(),
        "latency_estimate_ms": target_lat.estimate.as_dict(),
        "latency_note": target_lat.note,
        "onnx": ctx.run.relative(onnx_path),
        "seconds": round(seconds, 2),
        "details": output.details if output is not None else {},
    }


def _export_checked(model: nn.Module, ctx: StageContext, path: Path) -> dict:
    export_onnx(model, ctx.example, path, ctx.profile.export.opset)
    parity = check_parity(model, path, ctx.example, ctx.profile.export.atol)
    if not parity.ok:
        raise EdgekdError(f"{path}: ONNX Runtime's logits differ from PyTorch's by {parity.max_abs_diff:.2e} "
                          f"(tolerance {parity.atol:.0e})")
    return parity.as_dict()


def _teacher_stage(teacher: Teacher, ctx: StageContext) -> dict:
    fp = fingerprint("teacher", teacher.fingerprint, ctx.target.name, ctx.profile.export)
    done = ctx.run.completed("teacher", fp)
    if done is not None:
        return {**done, "resumed": True}
    record = None
    if distributed.is_main():
        started = time.perf_counter()
        path = ctx.run.path("stages/teacher.onnx")
        parity = _export_checked(teacher.model, ctx, path)
        record = _stage_record("teacher", teacher.model, None, ctx, path, 0.0, count(teacher.model, ctx.example), "teacher")
        record["details"] = {"origin": teacher.origin, "parity": parity, **teacher.details}
        record["seconds"] = round(time.perf_counter() - started, 2)
        ctx.run.mark_done("teacher", fp, record, [path])
    return distributed.broadcast(record)


def _run_stages(model: nn.Module, ctx: StageContext, chain_fp: str) -> tuple[nn.Module, list[dict]]:
    records = []
    last_counts = None
    for stage in STAGES:
        if not stage.enabled(ctx.profile):
            continue
        fp = fingerprint(chain_fp, stage.name, stage.config(ctx.profile, ctx.target))
        checkpoint = ctx.run.path(f"checkpoints/{stage.name}.pt")
        done = ctx.run.completed(stage.name, fp)
        if done is not None:
            info(f"{stage.name}: complete in {ctx.run.root}, skipped")
            if checkpoint.is_file():
                model = torch.load(checkpoint, map_location="cpu", weights_only=False)
            records.append({**done, "resumed": True})
            last_counts = (done["macs"], done["params"])
            chain_fp = fp
            continue
        started = time.perf_counter()
        output = stage.run(model, replace(ctx, fingerprint=fp))
        seconds = time.perf_counter() - started
        record = None
        if distributed.is_main():
            files = []
            if "int8_onnx" in output.artifacts:  # the quantized graph: counts are the FP32 graph's
                onnx_path = output.artifacts["int8_onnx"]
                counts = last_counts or count(model, ctx.example)
            else:
                onnx_path = ctx.run.path(f"stages/{stage.name}.onnx")
                parity = _export_checked(output.model, ctx, onnx_path)
                output.details["parity"] = parity
                counts = count(output.model, ctx.example)
                atomic_torch_save(output.model, checkpoint)
                files.append(checkpoint)
            record = _stage_record(stage.name, output.model, output, ctx, onnx_path, seconds, counts, stage.name)
            ctx.run.mark_done(stage.name, fp, record, [*files, onnx_path])
            ctx.run.path(f"progress/{stage.name}.pt").unlink(missing_ok=True)
        record = distributed.broadcast(record)
        records.append({**record, "resumed": False})
        last_counts = (record["macs"], record["params"])
        model = output.model
        chain_fp = fp
    return model, records


def _budget(target: Target, final: dict) -> dict:
    from edgekd.bench import budget_verdict

    return budget_verdict(target, final["latency_ms"], final["size_bytes"])


def _reference(ctx: StageContext, student_onnx: Path) -> dict:
    """Time a fixed reference model beside the student on this host: latency ratios between the two
    are comparable across machines and runs, where absolute milliseconds are not."""
    torch.manual_seed(0)
    reference = create_model(REFERENCE_ARCH, ctx.data.num_classes, ctx.data.input_shape).eval()
    path = ctx.run.path("stages/reference.onnx")
    export_onnx(reference, ctx.example, path, ctx.profile.export.opset)
    batch = ctx.target.input.batch
    ref = host_latency(path, ctx.target.threads, batch, label="reference latency")
    student = host_latency(student_onnx, ctx.target.threads, batch, label="student host latency")
    return {
        "model": f"{REFERENCE_ARCH} (seed 0, untrained)",
        "onnx": ctx.run.relative(path),
        "reference_ms": ref.as_dict(),
        "student_ms": student.as_dict(),
        "normalised_latency": student.p50 / ref.p50,
    }


def _layers(ctx: StageContext, final: dict, onnx_path: Path) -> list[dict]:
    from edgekd.estimate import estimate_layers

    if final["latency_ms"]["source"] == "measured":
        from edgekd.runtimes.onnxruntime import profile_layers

        rows = profile_layers(onnx_path, ctx.target.threads, ctx.target.input.batch)
        return [{**r, "source": "measured"} for r in rows]
    rows = estimate_layers(onnx_path, ctx.target, ctx.target.input.batch)
    return sorted(({"name": r.name, "op": r.op, "ms": r.ms, "precision": r.precision, "source": "estimated"}
                   for r in rows), key=lambda r: r["ms"], reverse=True)


def saved_options(run_dir: Path) -> dict:
    """The options a run was started with, so `--resume RUN_DIR` alone repeats the same command."""
    from edgekd.errors import BadInputError

    path = Path(run_dir) / "options.json"
    if not path.is_file():
        raise BadInputError(f"{run_dir} is not an edgekd run folder (no options.json)")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BadInputError(f"{path}: unreadable ({err})") from None


def compress(options: CompressOptions) -> CompressResult:
    run_dir = Path(options.run_dir or default_run_dir(options.target))
    try:
        return _compress(replace(options, run_dir=run_dir))
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; completed stages and the last epoch checkpoint are kept in {run_dir}. "
                          f"Resume with: edgekd compress --resume {run_dir}") from None


def _compress(options: CompressOptions) -> CompressResult:
    distributed.init_from_env()
    target = load_target(options.target)
    profile = options.resolved_profile()
    require_architecture(profile.student.arch)  # a typo fails now, not after the teacher trains
    data = load_data(options.data, profile.data, options.image_size, profile.seed)
    run_dir = Path(options.run_dir)
    run = RunFolder(run_dir)
    if distributed.is_main():
        run.create()
        atomic_write_json(run.path("options.json"), options.as_dict())
        atomic_write_json(run.path("config.json"), {"target": target.model_dump(mode="json"),
                                                    "profile": profile.model_dump(mode="json")})
    distributed.barrier()
    started = time.perf_counter()
    teacher = obtain_teacher(options.teacher, profile, data, Path(options.cache_dir or default_cache_dir()))
    example = torch.stack([data.test[i][0] for i in range(min(256, len(data.test)))])
    ctx = StageContext(profile, target, data, teacher.model, run, example)
    records = [_teacher_stage(teacher, ctx)]
    torch.manual_seed(profile.seed)
    student = create_model(profile.student.arch, data.num_classes, data.input_shape, profile.student.width)
    chain_fp = fingerprint(teacher.fingerprint, data.name, len(data.train), len(data.test), data.input_shape)
    _, stage_records = _run_stages(student, ctx, chain_fp)
    records += stage_records
    report = None
    if distributed.is_main():
        report = _finish(ctx, records, options, data, time.perf_counter() - started)
    distributed.barrier()
    report = distributed.broadcast(report)
    code = ExitCode.OK if report["budget"]["met"] else ExitCode.BUDGET_MISSED
    return CompressResult(report, run_dir, code)


def _finish(ctx: StageContext, records: list[dict], options: CompressOptions, data: DataBundle, seconds: float) -> dict:
    run, target = ctx.run, ctx.target
    fp32 = [r for r in records if r["name"] in ("distill", "prune")][-1]
    shutil.copyfile(run.root / fp32["onnx"], run.path(FP32_ONNX))
    artifacts = {"student_fp32_onnx": FP32_ONNX, "student_int8_onnx": None}
    final = records[-1]
    if final["name"] == "quantize":
        artifacts["student_int8_onnx"] = final["onnx"]
    final_onnx = run.root / final["onnx"]
    artifacts.update({f"checkpoint_{r['name']}": f"checkpoints/{r['name']}.pt" for r in records
                      if (run.root / f"checkpoints/{r['name']}.pt").is_file()})
    budget_record, tensorrt = final, None
    if target.runtime is Runtime.TENSORRT and artifacts["student_int8_onnx"]:
        from edgekd.deploy import CHECK_IMAGES, prepare_engine

        tensorrt = prepare_engine(run.root, target, final_onnx, ctx.example.numpy())
        artifacts.update({"engine": tensorrt["engine"], "build_script": tensorrt["build_script"],
                          "engine_check_images": CHECK_IMAGES})
        if tensorrt["engine_latency_ms"] is not None:  # a measured, parity-checked engine: the budget uses it
            budget_record = {**final, "latency_ms": tensorrt["engine_latency_ms"]}
    from edgekd.export.ort_format import write_ort_format  # mobile targets: student.int8.ort, checked

    ort_format = write_ort_format(run.root, target, artifacts["student_int8_onnx"], ctx.example.numpy(), ctx.profile.export)
    artifacts["student_int8_ort"] = ort_format["file"] if ort_format else None
    report = {
        "edgekd_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "target": {"name": target.name, "runtime": target.runtime.value, "precision": target.precision.value,
                   "activations": target.activation_scheme.value, "batch": target.input.batch,
                   "threads": target.threads, "machine": target.machine},
        "profile": ctx.profile.name,
        "dataset": {"name": data.name, "train": len(data.train), "test": len(data.test),
                    "classes": data.classes, "input_shape": list(data.input_shape)},
        "stages": records,
        "student": {"stage": final["name"], "onnx": final["onnx"]},
        "budget": _budget(target, budget_record),
        "tensorrt": tensorrt,
        "ort_format": ort_format,
        "reference": _reference(ctx, final_onnx),
        "layers": _layers(ctx, final, final_onnx),
        "artifacts": artifacts,
        "seconds": round(seconds, 1),
    }
    from edgekd.report_html import ACCURACY_LATENCY_PNG, LAYERS_PNG, REPORT_HTML, write_html

    artifacts.update({"report_json": REPORT, "report_html": REPORT_HTML,
                      "plot_accuracy_latency": ACCURACY_LATENCY_PNG, "plot_layers": LAYERS_PNG})
    write_html(report, run.root)
    atomic_write_json(run.path(REPORT), report)
    return report


def read_report(path: Path) -> dict:
    from edgekd.errors import BadInputError

    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BadInputError(f"report not found: {path}") from None
    except (OSError, json.JSONDecodeError) as err:
        raise BadInputError(f"{path}: not a readable report.json ({err})") from None
