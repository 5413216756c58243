"""`edgekd compress`: teacher -> distill -> prune -> quantize -> export -> verify, in one run folder.

Each stage is fingerprinted by its inputs and config; a completed stage is recorded atomically,
so `--resume` skips it and a changed profile reruns only what it changed. Under torchrun every
rank trains, rank 0 alone evaluates and writes, and the others wait for it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from edgekd import __version__, checkpoints, distributed
from edgekd.config import Profile, fingerprint, load_profile, load_target
from edgekd.data import DataBundle, load_data
from edgekd.errors import ExitCode, budget_exit_code
from edgekd.verify.accuracy_budget import accuracy_floor, accuracy_verdict
from edgekd.verify.latency_budget import budget_verdict, join_accuracy, latency_met, p50_state
from edgekd.metrics import count
from edgekd.models import create_model, require_architecture
from edgekd.progress import info
from edgekd.runfolder import FP32_ONNX, RunResult, atomic_write_bytes, atomic_write_json, claim_on_rank0, resumable, sha256
from edgekd.runtimes import backend, timing_threads
from edgekd.stages import StageContext
from edgekd.stages.record import StageRecord, record_stage
from edgekd.stages.distill import DistillStage
from edgekd.stages.prune import PruneStage
from edgekd.stages.quantize import QuantizeStage
from edgekd.stages.teacher import Teacher, TeacherSource, default_cache_dir, obtain_teacher, teacher_counts
from edgekd.training.teacher_logits import TeacherLogits
from edgekd.measure.target_latency import off_target_label, on_target_device, target_latency

STAGES = (DistillStage(), PruneStage(), QuantizeStage())  # in this order; nothing prunes after QAT
REPORT = "report.json"


@dataclass
class CompressOptions:
    """Everything `edgekd compress` needs, after the CLI and a resumed run's saved options merge."""

    target: str = "jetson-orin"
    profile: str = "default"
    data: str | None = None
    image_size: int = 32
    teacher: TeacherSource = field(default_factory=TeacherSource)
    student: str | None = None
    student_weights: str | None = None
    width: float | None = None
    seed: int | None = None
    run_dir: Path | None = None
    cache_dir: Path | None = None
    device: str = "auto"  # where training runs: auto (CUDA when available), cpu, cuda, cuda:N
    measure_here: bool = False  # time on this machine even when it is not the target's device (labelled)
    resume: bool = False  # run_dir is an earlier run to continue
    overwrite: bool = False  # run_dir may hold anything: write into it anyway

    def resolved_profile(self) -> Profile:
        profile = load_profile(self.profile)
        student = profile.student.model_copy(update={k: v for k, v in {
            "arch": self.student, "width": self.width, "weights": self.student_weights}.items() if v is not None})
        updates = {"student": student}
        if self.seed is not None:
            updates["seed"] = self.seed
        return profile.model_copy(update=updates)

    def as_dict(self) -> dict:
        return {
            "target": self.target, "profile": self.profile, "data": self.data, "image_size": self.image_size,
            "teacher": self.teacher.path_or_name, "teacher_arch": self.teacher.arch,
            "teacher_weights": self.teacher.weights, "student": self.student, "width": self.width,
            "student_weights": self.student_weights, "seed": self.seed, "device": self.device,
            # so that `--resume RUN_DIR` alone finds the teacher where this run cached it, and labels
            # latency as this run did
            "cache_dir": str(Path(self.cache_dir).absolute()) if self.cache_dir is not None else None,
            "measure_here": self.measure_here,
        }


def default_run_dir(target: str) -> Path:
    return Path("runs") / f"{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{target}"


def _teacher_stage(teacher: Teacher, ctx: StageContext) -> StageRecord:
    fp = fingerprint("teacher", teacher.fingerprint, ctx.profile.export, ctx.data.splits,
                     len(ctx.data.val), len(ctx.data.test))
    done = StageRecord.from_folder(ctx.run.completed("teacher", fp))
    if done is not None:
        return done
    record = None
    if distributed.is_main():
        started = time.perf_counter()
        record = record_stage("teacher", teacher.model, ctx, precision="fp32", counts=teacher_counts(teacher.model, ctx.example),
                              seconds=0.0, details={"origin": teacher.origin, **teacher.details})
        # the stage's time is obtaining the teacher (training it, on a cold run) plus recording it
        record = replace(record, seconds=round(teacher.details.get("obtain_seconds", 0.0) + time.perf_counter() - started, 2))
        ctx.run.mark_done("teacher", fp, record.as_saved(), [ctx.run.root / record.onnx])
    return distributed.broadcast(record)


def _run_stages(model: nn.Module, ctx: StageContext, chain_fp: str) -> tuple[nn.Module, list[StageRecord]]:
    records: list[StageRecord] = []
    for stage in STAGES:
        if not stage.enabled(ctx.profile):
            continue
        fp = fingerprint(chain_fp, stage.name, stage.config(ctx.profile, ctx.target))
        checkpoint = ctx.run.path(f"checkpoints/{stage.name}.pt")
        done = StageRecord.from_folder(ctx.run.completed(stage.name, fp))
        if done is not None:
            info(f"{stage.name}: complete in ", user_text=f"{ctx.run.root}, skipped")
            if checkpoint.is_file():
                model = checkpoints.load_model(checkpoint, like=model)
            records.append(done)
            chain_fp = fp
            continue
        started = time.perf_counter()
        output = stage.run(model, replace(ctx, fingerprint=fp))
        seconds = time.perf_counter() - started
        record = None
        if distributed.is_main():
            # a quantized graph counts as the FP32 graph it was made from
            counts = ((records[-1].macs, records[-1].params) if records else count(model, ctx.example)) \
                if output.precision == "int8" else count(output.model, ctx.example)
            record = record_stage(stage.name, output.model, ctx, precision=output.precision, counts=counts,
                                  seconds=seconds, details=output.details,
                                  parent_onnx=ctx.run.root / records[-1].onnx if records else None)
            files = [ctx.run.root / record.onnx]
            if output.precision == "fp32":
                checkpoints.save_model(output.model, checkpoint)
                files.append(checkpoint)
            ctx.run.mark_done(stage.name, fp, record.as_saved(), files)
            ctx.run.path(f"progress/{stage.name}.pt").unlink(missing_ok=True)
        records.append(distributed.broadcast(record))
        model = output.model
        chain_fp = fp
    return model, records


def _budget(ctx: StageContext, records: list[dict], latency: dict, note: str) -> dict:
    """Both budgets, side by side: latency (and memory) on the target, and top-1 against the teacher."""
    budget = budget_verdict(ctx.target, latency, records[-1]["size_bytes"], note)
    join_accuracy(budget, accuracy_verdict(records, ctx.profile, ctx.target), ctx.profile.accuracy.not_shown)
    budget["teacher"] = _against_teacher(ctx.target, records[0], records[-1], latency)
    fit = next((r["details"]["budget_fit"] for r in records if "budget_fit" in r.get("details", {})), None)
    if fit is not None:
        budget["pruning"] = pruning_line(fit, budget)
    return budget


def pruning_line(fit: dict, budget: dict) -> dict:
    """Budget pruning's own account, worded so it cannot contradict the verdict: pruning that
    stopped short of its margin is a note when the shipped student meets the budget all the same,
    and the named reason of the miss when it does not. The exit code follows the verdict only
    (`exit_code(budget)`)."""
    if fit["met"]:
        state, line = "fitted", fit["message"]
    elif latency_met(budget):
        state, line = "note", (f"note: {fit['message']}; the shipped student meets the latency budget all the same "
                               f"(the margin is headroom pruning aims for, not the budget)")
    else:
        state, line = "missed", f"latency MISSED because {fit['message']}"
    return {"state": state, "line": line}


def _against_teacher(target, teacher: dict, student: dict, student_latency: dict) -> dict:
    """What compression bought: whether the teacher as given (its own file, on the same target, same
    source) already meets the latency budget, and the shipped student's speed-up and accuracy cost."""
    teacher_ms, student_ms, limit = teacher["latency_ms"]["p50"], student_latency["p50"], target.budget_p50_ms
    state = None if limit is None else p50_state(teacher["latency_ms"], limit)
    meets = None if state is None else state == "MET"
    speedup = teacher_ms / student_ms if student_ms > 0 else float("inf")
    cost = 100 * (teacher["val_accuracy"] - student["val_accuracy"])
    said = {"MET": "meets", "MISSED": "misses", "NOT SHOWN": "cannot be shown to meet or miss"}
    fits = "has no p50 budget to meet" if limit is None else f"{said[state]} the {limit:g} ms budget"
    line = (f"against the teacher: the teacher alone runs {teacher_ms:.3f} ms p50 ({teacher['precision'].upper()}, "
            f"{_source_and_range(teacher['latency_ms'])}) and {fits}; the student is {speedup:.1f}x faster "
            f"({student_ms:.3f} ms, {_source_and_range(student_latency)}) and "
            f"{'loses' if cost >= 0 else 'gains'} {abs(cost):.2f} points of validation top-1")
    if meets:
        line += "; the teacher already fits, so compression bought headroom, not the fit"
    return {"p50_ms": teacher_ms, "student_p50_ms": student_ms, "source": teacher["latency_ms"]["source"], "precision": teacher["precision"],
            "meets_budget": meets, "budget_state": state, "student_speedup": speedup, "accuracy_cost_points": cost, "line": line}


def _source_and_range(latency: dict) -> str:
    """"measured", or "estimated, 0.8-1.9 ms": an estimate always with its error range."""
    if latency.get("source") == "estimated" and latency.get("p50_high") is not None:
        return f"estimated, {latency['p50_low']:.3f}-{latency['p50_high']:.3f} ms"
    return latency.get("source", "")


def _latencies(ctx: StageContext, records: list[StageRecord], measure_here: bool) -> list[dict]:
    """The report's stage rows: each record with its file's latency for this run's target on this
    machine, so a run resumed with another target reports that target's numbers, never the old one's."""
    return [{**record.as_dict(), **target_latency(ctx.run.root / record.onnx, ctx.target, label=f"{record.name} latency",
                                                  measure_here=measure_here).as_record()} for record in records]


def gate_subject(root: Path, final: dict) -> Path:
    """The file the CI gate times: the final student as an all-INT8 graph, like its reference. Where
    layers were kept float by timing on this CPU (export.int8_fit.keep_slow_layers_float), that is the graph
    before they were: the same file on every CPU, where the shipped one is not."""
    kept = (final.get("details") or {}).get("runtime_fit", {}).get("all_int8_onnx")
    return root / (kept or final["onnx"])


def _reference(ctx: StageContext, student_onnx: Path) -> dict:
    """What the CI gate compares: the student timed beside a fixed reference that scales like it
    (edgekd.measure.normalised_latency), so the ratio is comparable across machines where milliseconds are not."""
    from edgekd.measure.normalised_latency import build_reference, gate_latency, reference_description

    scheme = ctx.target.activation_scheme
    path, macs = build_reference(ctx.run.path("stages/reference.onnx"), ctx.data.num_classes, ctx.data.input_shape,
                                 scheme, ctx.profile.export.opset)
    return {"model": reference_description(scheme), "macs": macs, "onnx": ctx.run.relative(path),
            "student_onnx": ctx.run.relative(student_onnx), **gate_latency(student_onnx, path)}


def _layers(ctx: StageContext, final: dict, onnx_path: Path) -> list[dict]:
    from edgekd.measure.estimate import estimate_layers

    if final["latency_ms"]["source"] == "measured":  # on the device, or labelled with --measure-here
        # the target runtime's own profiler (OpenVINO's layers, not ONNX Runtime's nodes)
        rows = backend(ctx.target).profile_layers(onnx_path, timing_threads(ctx.target), ctx.target.input.batch)
        if rows is not None:
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
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # ValueError: bad JSON or not UTF-8
        raise BadInputError(f"{path}: unreadable ({str(err).splitlines()[0][:160]})") from None


def compress(options: CompressOptions) -> RunResult:
    return resumable(lambda claimed: _compress(options, claimed), options.run_dir)


def _compress(options: CompressOptions, claimed: dict) -> RunResult:
    distributed.init_from_env(options.device)
    target = load_target(options.target)
    profile = options.resolved_profile()
    require_architecture(profile.student.arch)  # a typo fails now, not after the teacher trains
    _check_teacher_file(options.teacher)  # a FIFO or /dev/zero is refused before anything opens it
    for what, path in (("--run-dir", options.run_dir), ("--cache-dir", options.cache_dir),
                       ("--teacher", options.teacher.path_or_name), ("--teacher-weights", options.teacher.weights)):
        _require_utf8(what, path)
    data = load_data(options.data, profile.data, options.image_size, profile.seed, _teacher_preprocessing(options.teacher))
    run, claimed["lock"] = claim_on_rank0(options.run_dir, default_run_dir(target.name),  # the validated name
                                          resume=options.resume, overwrite=options.overwrite)
    run_dir = claimed["run_dir"] = run.root
    options = replace(options, run_dir=run_dir)
    checkpoints.refuse_unsafe(run_dir)  # an older edgekd's pickled modules: refused before any work
    if distributed.is_main():
        atomic_write_json(run.path("options.json"), options.as_dict())
        atomic_write_json(run.path("config.json"), {"target": target.model_dump(mode="json"),
                                                    "profile": profile.model_dump(mode="json")})
    distributed.barrier()
    started = time.perf_counter()
    teacher = obtain_teacher(options.teacher, profile, data, Path(options.cache_dir or default_cache_dir()))
    teacher.details["obtain_seconds"] = round(time.perf_counter() - started, 2)  # trained, or loaded
    example = torch.stack([data.val[i][0] for i in range(min(256, len(data.val)))])
    ctx = StageContext(profile, target, data, teacher.model, run, example,
                       teacher_logits=TeacherLogits(teacher.model, data.train, data.num_classes))
    records = [_teacher_stage(teacher, ctx)]
    ctx = replace(ctx, accuracy_floor=accuracy_floor(records[0].val_accuracy, profile, target))
    torch.manual_seed(profile.seed)
    student, start = _fresh_student(profile, data)
    ctx = replace(ctx, student_start=start)
    chain_fp = fingerprint(teacher.fingerprint, data.name, data.splits, len(data.train), len(data.val),
                           len(data.test), data.input_shape, *profile.arithmetic,
                           *([start] if start else []))
    _, stage_records = _run_stages(student, ctx, chain_fp)
    records += stage_records
    report = None
    if distributed.is_main():
        report = _finish(ctx, records, options, data, time.perf_counter() - started)
    distributed.barrier()
    report = distributed.broadcast(report)
    code = exit_code(report["budget"])
    return RunResult(report, run_dir, code)


def _fresh_student(profile: Profile, data: DataBundle) -> tuple[nn.Module, dict | None]:
    """The student before distillation: built fresh, or from the profile's pretrained weights."""
    cfg = profile.student
    student = create_model(cfg.arch, data.num_classes, data.input_shape, cfg.width)
    if cfg.weights is None:
        return student, None
    from edgekd.models import read_weights
    from edgekd.models.weights import fit_pretrained

    path = Path(cfg.weights)
    adapted = fit_pretrained(student, read_weights(path, "student weights"), str(path))
    return student, {**adapted.as_dict(), "sha256": sha256(path)}  # a new head is probed by the distill stage


def _teacher_preprocessing(source: TeacherSource) -> dict | None:
    """A named timm teacher's own preprocessing (a file's only with --teacher-arch): used where the
    profile's [data] sets none."""
    from edgekd.errors import BadInputError
    from edgekd.models import library_preprocessing

    name = source.arch if source.arch is not None else source.path_or_name if source.weights is not None else None
    if name is None:
        return None
    try:
        return library_preprocessing(name)
    except BadInputError:  # an unknown name: the teacher's loader says so, in its own words
        return None


def _require_utf8(what: str, path: object) -> None:
    """ONNX export and TorchScript take file names as UTF-8 strings: a name that is not valid UTF-8
    (Python keeps its bytes as surrogates) is refused up front, not by a traceback mid-run."""
    from edgekd.errors import BadInputError

    if path is None:
        return
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise BadInputError(f"{what} {shown}: the name is not valid UTF-8, which the ONNX and torch writers "
                            "edgekd uses cannot open; rename it") from None


def _check_teacher_file(source: TeacherSource) -> None:
    from edgekd.models.teacher_files import require_regular_file

    if source.path_or_name is not None and os.path.lexists(source.path_or_name):
        require_regular_file(Path(source.path_or_name))
    if source.weights is not None and os.path.lexists(source.weights):
        require_regular_file(Path(source.weights), "teacher weights")


def _finish(ctx: StageContext, records: list[StageRecord], options: CompressOptions, data: DataBundle, seconds: float) -> dict:
    run, target = ctx.run, ctx.target
    records = _latencies(ctx, records, options.measure_here)
    fp32 = [r for r in records if r["name"] in ("distill", "prune")][-1]
    atomic_write_bytes(run.path(FP32_ONNX), (run.root / fp32["onnx"]).read_bytes())
    artifacts = {"student_fp32_onnx": FP32_ONNX, "student_int8_onnx": None}
    final = records[-1]
    if final["name"] == "quantize":
        artifacts["student_int8_onnx"] = final["onnx"]
    final_onnx = run.root / final["onnx"]
    artifacts.update({f"checkpoint_{r['name']}": f"checkpoints/{r['name']}.pt" for r in records
                      if (run.root / f"checkpoints/{r['name']}.pt").is_file()})
    budget_latency, budget_note, tensorrt, shipped, budget_records = final["latency_ms"], final["latency_note"], None, None, records
    if artifacts["student_int8_onnx"]:  # INT8 or FP32: whichever runs faster on the target ships
        from edgekd.verify.ship import ship

        shipped, shipped_record, ir_files = ship(run.root, target, fp32, final, options.measure_here)
        artifacts.update(ir_files)
        if shipped_record is not final:  # FP32 ships: the budgets judge its latency, size and accuracy
            budget_latency, budget_note, budget_records = shipped_record["latency_ms"], shipped_record["latency_note"], \
                [*records[:-1], shipped_record]
    if backend(target).needs_engine and artifacts["student_int8_onnx"]:  # TensorRT: engine and build script
        from edgekd.export.tensorrt_engine import CHECK_IMAGES, prepare_engine

        tensorrt = prepare_engine(run.root, target, final_onnx, ctx.example.numpy())
        artifacts.update({"engine": tensorrt["engine"], "build_script": tensorrt["build_script"],
                          "engine_check_images": CHECK_IMAGES})
        on_device = on_target_device(target)[0]
        if tensorrt["engine_latency_ms"] is not None and (on_device or options.measure_here):
            # a measured, parity-checked engine on the device (or labelled): the budget uses it
            budget_latency, budget_note = tensorrt["engine_latency_ms"], "" if on_device else off_target_label(target)
    from edgekd.export.ort_format import write_ort_format  # mobile targets: student.int8.ort, checked

    ort_format = write_ort_format(run.root, target, artifacts["student_int8_onnx"], ctx.example.numpy(), ctx.profile.export)
    artifacts["student_int8_ort"] = ort_format["file"] if ort_format else None
    report = {
        "status": "complete",  # `edgekd check` refuses any other; a run in progress has no report.json
        "run_id": run.run_id,
        "edgekd_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "target": {"name": target.name, "runtime": target.runtime.value, "precision": target.precision.value,
                   "activations": target.activation_scheme.value, "batch": target.input.batch,
                   "threads": target.threads, "machine": target.machine, "device": target.device.label,
                   "on_device": on_target_device(target)[0]},
        "profile": ctx.profile.name,
        "training": {"device": str(distributed.device()), "processes": distributed.world_size()},
        "dataset": {"name": data.name, "train": len(data.train), "val": len(data.val), "test": len(data.test),
                    "splits": data.splits, "classes": data.classes, "input_shape": list(data.input_shape),
                    **({"preprocess": data.preprocess} if data.preprocess else {})},
        "stages": records,
        "student": {"stage": final["name"], "onnx": final["onnx"]},
        "budget": _budget(ctx, budget_records, budget_latency, budget_note),
        "shipped": shipped,
        "tensorrt": tensorrt,
        "ort_format": ort_format,
        "reference": _reference(ctx, gate_subject(run.root, final)),
        "layers": _layers(ctx, final, final_onnx),
        "artifacts": artifacts,
        "seconds": round(seconds, 1),
    }
    if shipped and shipped["warning"]:
        report["budget"]["verdict"] += f". {shipped['warning']}"
    from edgekd.report.html import ACCURACY_LATENCY_PNG, LAYERS_PNG, REPORT_HTML, write_html

    artifacts.update({"report_json": REPORT, "report_html": REPORT_HTML,
                      "plot_accuracy_latency": ACCURACY_LATENCY_PNG, "plot_layers": LAYERS_PNG})
    write_html(report, run.root)
    atomic_write_json(run.path(REPORT), report)
    return report


def exit_code(budget: dict) -> ExitCode:
    """MET 0, MISSED 3, NOT SHOWN 6 (0 where the profile says `[accuracy] not_shown = "pass"`)."""
    return budget_exit_code(budget)


def budget_fit(report: dict) -> dict | None:
    """The prune stage's budget record (goal = "budget"): whether pruning fitted the target's budget
    within the accuracy floor, with both numbers; None for other goals."""
    for stage in report["stages"]:
        if "budget_fit" in stage.get("details", {}):
            return stage["details"]["budget_fit"]
    return None


def read_report(path: Path) -> dict:
    from edgekd.errors import BadInputError

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(f"report not found: {path}") from None
    except (OSError, ValueError) as err:  # ValueError: bad JSON or not UTF-8
        raise BadInputError(f"{path}: not a readable report.json ({err})") from None
