"""The `edgekd` command line. Thin: each command resolves its options and calls one function."""

from __future__ import annotations

import contextlib
import enum
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from edgekd.report import listing
from edgekd.errors import EdgekdError, ExitCode

app = typer.Typer(
    help="Distil, prune and quantize an image classifier into an INT8 model that fits an edge device's budget.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
targets_app = typer.Typer(help="Hardware targets (targets/*.toml): runtimes, budgets, peak figures.", no_args_is_help=True)
profiles_app = typer.Typer(help="Compression recipes (profiles/*.toml).", no_args_is_help=True)
app.add_typer(targets_app, name="targets")
app.add_typer(profiles_app, name="profiles")
out = listing.console()

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON on stdout (keys in the README) instead of text.")]
BoxFlag = Annotated[Optional[bool], typer.Option("--box/--no-box", help="Rule under the table header. [default: on a terminal, not in a pipe]")]


def _version(value: bool) -> None:
    if value:
        from edgekd import __version__

        out.print(f"edgekd {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", callback=_version,
                                          is_eager=True)] = False,
) -> None:
    """Distil, prune and quantize an image classifier into an INT8 model that fits an edge device's budget."""


@app.command()
def compress(
    target: Annotated[Optional[str], typer.Option(help="Target name (see `edgekd targets list`) or a TOML file. [default: jetson-orin]")] = None,
    profile: Annotated[Optional[str], typer.Option(help="Recipe name (see `edgekd profiles list`) or a TOML file. [default: default]")] = None,
    data: Annotated[Optional[str], typer.Option(help="ImageFolder tree (train/ + val/ or test/, or one tree of class folders split by the profile's data.test_fraction and data.val_fraction). Default: Fashion-MNIST from Debian's dataset-fashion-mnist.")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Square size ImageFolder images are resized to. [default: 32]", min=8, max=4096)] = None,
    teacher: Annotated[Optional[str], typer.Option(help="Teacher: an edgekd checkpoint, a state dict (+ --teacher-arch), a TorchScript or torch.export (.pt2) file, or an architecture name with --teacher-weights. Default: train the built-in teacher once and cache it.")] = None,
    teacher_arch: Annotated[Optional[str], typer.Option(help="Architecture of a bare state-dict --teacher.")] = None,
    teacher_weights: Annotated[Optional[str], typer.Option(help="Weights file for a named --teacher architecture.")] = None,
    trust_torchscript: Annotated[bool, typer.Option("--trust-torchscript", help="Load a TorchScript --teacher: it is code and runs when loaded, so only from a source you trust (never saved for --resume).")] = False,
    student: Annotated[Optional[str], typer.Option(help="Student architecture: edgekd_cnn_fc, edgekd_cnn, edgekd_mobilenet_v3_small, edgekd_resnet18, edgekd_resnet, edgekd_resnet_fc, or any torchvision or timm classifier by name (resnet18, timm:mobilenetv3_small_100). [default: the profile's]")] = None,
    width: Annotated[Optional[float], typer.Option(help="Student width multiplier. [default: the profile's]", min=0.05, max=16)] = None,
    student_weights: Annotated[Optional[str], typer.Option(help="Pretrained weights for a zoo --student (a state dict file; a classifier for other classes gets a new head). [default: the profile's, else none]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed; the same command and seed give the same model. [default: the profile's]", min=0, max=2**32 - 1)] = None,
    run_dir: Annotated[Optional[Path], typer.Option(help="Run folder: a new or empty one (an existing run's needs --resume or --overwrite). [default: runs/<timestamp>-<target>, made unique]")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Resume this run folder: completed stages are skipped (if their inputs and config are unchanged), an interrupted stage restarts from its last epoch.")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Where the built-in teacher is cached.", envvar="EDGEKD_CACHE_DIR")] = None,
    device: Annotated[Optional[str], typer.Option(help="Where training runs: auto (CUDA when available), cpu, cuda or cuda:N. [default: auto]")] = None,
    measure_here: Annotated[bool, typer.Option(help="Time every stage on this machine even when it is not the target's device; the report and verdict say 'measured on <this machine>, not on <target device>'.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into --run-dir even if it holds an earlier run or other files (an earlier report is renamed report.previous.json).")] = False,
    task: Annotated[Optional[Task], typer.Option(help="classify (ImageFolder classifiers) or detect (COCO or YOLO detectors, judged by mAP). [default: classify; a resumed run's own]")] = None,
) -> None:
    """Run teacher -> distill -> prune -> QAT -> export -> verify, and check the student against the target's budget.

    Exit codes: 0 budget met, 3 budget missed, 6 not shown, 2 bad input, 5 disk or environment, 130 interrupted.
    """
    from edgekd.pipeline import CompressOptions, compress as run_compress, saved_options
    from edgekd.stages.teacher import TeacherSource

    given = {
        "target": target, "profile": profile, "data": data, "image_size": image_size, "teacher": teacher,
        "teacher_arch": teacher_arch, "teacher_weights": teacher_weights, "student": student, "width": width,
        "student_weights": student_weights, "seed": seed, "device": device,
    }
    saved: dict = {}
    if resume is not None:
        if run_dir is not None and run_dir != resume:
            raise _bad("--resume and --run-dir name different folders; give one")
        saved = saved_options(resume)
        saved_task = saved.get("task", "classify")
        if task is not None and task.value != saved_task:
            raise _bad(f"--task {task.value}: {resume} is a {saved_task} run")
        task = Task(saved_task) if saved_task in ("classify", "detect") else None
        given = {k: (v if v is not None else saved.get(k)) for k, v in given.items()}
        run_dir = resume
        if cache_dir is None and saved.get("cache_dir") is not None:  # given (or EDGEKD_CACHE_DIR) wins
            if not isinstance(saved["cache_dir"], str):
                raise _bad(f"{resume / 'options.json'}: cache_dir is not a path")
            cache_dir = Path(saved["cache_dir"])
        measure_here = measure_here or saved.get("measure_here") is True
    if task is Task.DETECT:
        _compress_detector(given, trust_torchscript, run_dir, resume, cache_dir, measure_here, overwrite)
    options = CompressOptions(
        target=given["target"] or "jetson-orin",
        profile=given["profile"] or "default",
        data=given["data"],
        image_size=given["image_size"] or 32,
        teacher=TeacherSource(given["teacher"], given["teacher_arch"], given["teacher_weights"], trust_torchscript),
        student=given["student"],
        student_weights=given["student_weights"],
        width=given["width"],
        seed=given["seed"],
        run_dir=run_dir,
        cache_dir=cache_dir,
        device=given["device"] or "auto",
        measure_here=measure_here,
        resume=resume is not None,
        overwrite=overwrite,
    )
    with contextlib.redirect_stdout(sys.stderr):  # libraries' progress (NNCF's bars) is not the result
        result = run_compress(options)
    from edgekd import distributed

    if distributed.is_main():
        print_report(result.report, result.run_dir)
    distributed.shutdown()
    raise typer.Exit(int(result.exit_code))


class Task(str, enum.Enum):
    CLASSIFY = "classify"
    DETECT = "detect"


def _compress_detector(given: dict, trust_torchscript: bool, run_dir, resume, cache_dir, measure_here: bool,
                       overwrite: bool) -> None:
    """`--task detect`: the detection chain (edgekd.detection.compress); classifier-only options are refused."""
    from edgekd.detection.compress import DetectOptions, compress_detector

    classifier_only = {"teacher_arch": "--teacher-arch", "teacher_weights": "--teacher-weights", "student": "--student",
                       "width": "--width", "student_weights": "--student-weights", "device": "--device"}
    given_only = [flag for key, flag in classifier_only.items() if given[key] is not None]
    if trust_torchscript:
        given_only.append("--trust-torchscript")
    if given_only:
        raise _bad(f"{', '.join(given_only)}: not for --task detect (its teacher is a detector file, its student "
                   "the profile's)")
    options = DetectOptions(target=given["target"] or "jetson-orin", profile=given["profile"] or "detect",
                            data=given["data"], image_size=given["image_size"], teacher=given["teacher"],
                            seed=given["seed"], run_dir=run_dir, cache_dir=cache_dir, measure_here=measure_here,
                            resume=resume is not None, overwrite=overwrite)
    with contextlib.redirect_stdout(sys.stderr):
        result = compress_detector(options)
    print_detection_report(result.report, result.run_dir)
    raise typer.Exit(int(result.exit_code))


def print_detection_report(report: dict, run_dir: Path) -> None:
    table = listing.detection_table(report, listing.wants_box(out, None))
    out.print(f"edgekd: {report['profile']} profile (detect) -> {report['target']['name']}", highlight=False, markup=False)
    listing.print_table(out, table)
    post = report["postprocess"]
    out.print(f"post-processing: decode + NMS {post['p50_ms']:.3f} ms p50 per image, {post['source']}",
              highlight=False, markup=False, soft_wrap=True)
    for note in sorted({s["latency_note"] for s in report["stages"] if s.get("latency_note")}):
        out.print(f"latency note: {note}", markup=False, highlight=False)
    budget = report["budget"]
    from edgekd.verify.latency_budget import latency_met

    colour = "[yellow]" if budget.get("latency_state") == "NOT SHOWN" else "[green]" if latency_met(budget) else "[red]"
    out.print(colour + escape(budget["verdict"]), highlight=False, soft_wrap=True)
    state = budget["accuracy"]["state"]
    out.print({"MET": "[green]", "NOT SHOWN": "[yellow]"}.get(state, "[red]") + escape(budget["accuracy"]["verdict"]),
              highlight=False, soft_wrap=True)
    out.print(f"run folder: {run_dir}", highlight=False, markup=False)


def print_report(report: dict, run_dir: Path, boxed: bool | None = None) -> None:
    """The run's table and verdict lines; user text (names, paths) is never markup (`escape`)."""
    table, notes = listing.stage_table(report, listing.wants_box(out, boxed))
    out.print(f"edgekd: {report['profile']} profile -> {report['target']['name']}", highlight=False, markup=False)
    listing.print_table(out, table)
    for note in notes:
        out.print(note, highlight=False, markup=False)
    runtimes = sorted({s["latency_ms"]["runtime"] for s in report["stages"]})
    out.print(f"latency: {'; '.join(runtimes)}; batch {report['target']['batch']}", highlight=False, markup=False)
    for note in sorted({s["latency_note"] for s in report["stages"] if s.get("latency_note")}):
        out.print(f"latency note: {note}", markup=False, highlight=False)
    budget = report["budget"]
    from edgekd.verify.latency_budget import latency_met

    colour = "[yellow]" if budget.get("latency_state") == "NOT SHOWN" else "[green]" if latency_met(budget) else "[red]"
    # verdicts are one line each, never wrapped: CI logs grep them
    out.print(colour + escape(budget["verdict"]), highlight=False, soft_wrap=True)
    if "accuracy" in budget:
        state = budget["accuracy"].get("state") or ("MET" if budget["accuracy"]["met"] else "MISSED")
        out.print({"MET": "[green]", "NOT SHOWN": "[yellow]"}.get(state, "[red]") + escape(budget["accuracy"]["verdict"]),
                  highlight=False, soft_wrap=True)
    if "teacher" in budget:
        out.print(budget["teacher"]["line"], highlight=False, soft_wrap=True, markup=False)
    if "pruning" in budget:  # budget pruning's account: fitted, a note, or why the latency missed
        colour = {"fitted": "[green]", "note": "[yellow]", "missed": "[red]"}[budget["pruning"]["state"]]
        out.print(colour + escape(budget["pruning"]["line"]), soft_wrap=True, highlight=False)
    out.print(f"run folder: {run_dir}  (open {run_dir / 'report.html'})", highlight=False, markup=False)


@targets_app.command("list")
def targets_list(as_json: JsonFlag = False, box: BoxFlag = None) -> None:
    """List the hardware targets (`show NAME` for every field, and why one is estimated here)."""
    from edgekd.config import list_targets

    targets = list_targets()
    if as_json:
        listing.emit_json({"targets": [listing.target_json(t) for t in targets]})
        return
    table, notes = listing.targets_table(targets, listing.wants_box(out, box))
    listing.print_table(out, table)
    for note in notes:
        out.print(note, highlight=False, markup=False)


@targets_app.command("show")
def targets_show(name: str, as_json: JsonFlag = False) -> None:
    """Show one target's validated fields, and whether its latency is measured on this machine."""
    from edgekd.config import load_target

    _show(listing.target_json(load_target(name)), as_json)


@profiles_app.command("list")
def profiles_list(as_json: JsonFlag = False, box: BoxFlag = None) -> None:
    """List the compression recipes (`show NAME` for the description and every field)."""
    from edgekd.config import list_profiles

    profiles = list_profiles()
    if as_json:
        listing.emit_json({"profiles": [listing.profile_json(p) for p in profiles]})
        return
    listing.print_table(out, listing.profiles_table(profiles, listing.wants_box(out, box)))


@profiles_app.command("show")
def profiles_show(name: str, as_json: JsonFlag = False) -> None:
    """Show one profile's validated fields, defaults filled in."""
    from edgekd.config import load_profile

    _show(listing.profile_json(load_profile(name)), as_json)


def _show(fields: dict, as_json: bool) -> None:
    if as_json:
        listing.emit_json(fields)
        return
    for line in listing.field_lines(fields):
        out.print(line, highlight=False, markup=False)


@app.command()
def bench(
    model: Annotated[Path, typer.Argument(help="An ONNX file (or a TensorRT .engine where TensorRT runs, or an OpenVINO IR .xml).")],
    target: Annotated[str, typer.Option(help="Target name or TOML file.")] = "host-cpu",
    batch: Annotated[Optional[int], typer.Option(help="Batch size. [default: the target's]", min=1, max=1_000_000)] = None,
    measure_here: Annotated[bool, typer.Option(help="Time the model on this machine even when it is not the target's device; the verdict says 'measured on <this machine>, not on <target device>'.")] = False,
    input_shape: Annotated[Optional[str], typer.Option(help="C,H,W to time a model whose height/width are dynamic (e.g. 3,224,224).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Measure (or, where the target is not this machine, estimate) one model's latency against a target's budget."""
    from edgekd.bench import bench_model, parse_input_shape

    result = bench_model(model, target, batch, measure_here, parse_input_shape(input_shape))
    if as_json:
        listing.emit_json(result.as_dict())
    else:
        out.print(result.summary, highlight=False, markup=False)
    state = (result.budget or {}).get("state", "MET" if result.met else "MISSED")
    raise typer.Exit(int({"MET": ExitCode.OK, "NOT SHOWN": ExitCode.NOT_SHOWN}.get(state, ExitCode.BUDGET_MISSED)))


@app.command()
def calibrate(
    reports: Annotated[list[Path], typer.Argument(help="`edgekd bench --json` reports measured on the device (3 or more).")],
    target: Annotated[str, typer.Option(help="Target name or TOML file to refit.")] = "host-cpu",
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the calibrated target file.")] = Path("calibrated.toml"),
) -> None:
    """Refit a target's latency estimate to timings measured on its device; writes a target file whose error range is shown on models left out of the fit."""
    from edgekd.measure.calibrate import refit_target
    from edgekd.runfolder import atomic_write_text

    refit = refit_target(target, reports)
    atomic_write_text(out_file, refit.text)
    for row in refit.rows:
        out.print(f"{row['model']} ({row['precision']}): measured {row['measured_ms']:.3f} ms; estimated "
                  f"{row['before_ms']:.3f} ms before, {row['after_ms']:.3f} ms after (fitted without it)",
                  highlight=False, markup=False)
    err = refit.calibration.error
    out.print(f"calibrated target written to {out_file}: estimated / measured from {err.low:.3f} to {err.high:.3f} "
              f"(median error {err.median:.3f}x, worst {err.worst:.3f}x, on models left out of the fit); "
              f"use it with --target {out_file}", highlight=False, markup=False)


class NotShown(str, enum.Enum):
    PASS = "pass"
    FAIL = "fail"


@app.command()
def check(
    report: Annotated[Path, typer.Argument(help="report.json of the run to check.")],
    baseline: Annotated[Path, typer.Option(help="report.json of the accepted baseline.")],
    tolerance: Annotated[float, typer.Option(help="Allowed relative slow-down of the normalised latency.", min=0, max=100)] = 0.10,
    accuracy_tolerance: Annotated[float, typer.Option(help="Allowed top-1 drop, in absolute terms (0.01 = 1 point).", min=0, max=1)] = 0.01,
    as_json: JsonFlag = False,
    macs_tolerance: Annotated[float, typer.Option(help="Allowed relative growth of the final student's MACs per image.", min=0)] = 0.10,
    allow_mismatch: Annotated[bool, typer.Option(help="Compare even when target, gate threads/batch/reference or final stage differ (a note instead of a failure).")] = False,
    not_shown: Annotated[NotShown, typer.Option(help="A report whose accuracy budget is NOT SHOWN (within it, but the data cannot rule out more): pass, or fail (exit 6).")] = "pass",
) -> None:
    """CI latency regression gate: exit 4 when the student got slower or less accurate than the baseline, or the runs are not comparable; 6 with --not-shown fail on a NOT SHOWN accuracy budget."""
    from edgekd.verify.ci_gate import compare, require_complete
    from edgekd.pipeline import read_report

    checked = require_complete(read_report(report), str(report), required=True)
    accepted = require_complete(read_report(baseline), str(baseline), required=False)
    result = compare(checked, accepted, tolerance, accuracy_tolerance, macs_tolerance=macs_tolerance,
                     report_name=str(report), baseline_name=str(baseline), allow_mismatch=allow_mismatch)
    if as_json:
        listing.emit_json(result.as_dict())
    else:
        for line in result.lines:
            out.print(line, highlight=False, markup=False)
    if not result.ok:
        raise typer.Exit(int(ExitCode.REGRESSION))
    state = (checked.get("budget") or {}).get("state")
    if state == "NOT SHOWN" and NotShown(not_shown) is NotShown.FAIL:
        if not as_json:
            out.print(f"FAIL: the accuracy budget is NOT SHOWN ({checked['budget']['accuracy']['verdict']}) "
                      "and --not-shown fail was given", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(int(ExitCode.NOT_SHOWN))
    raise typer.Exit(int(ExitCode.OK))


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A run folder holding report.json.")]) -> None:
    """Re-render report.html and its plots from a run folder's report.json (after an upgrade, say)."""
    from edgekd.report.html import render_run

    out.print(f"wrote {render_run(run_dir)}", highlight=False, markup=False, soft_wrap=True)


@app.command("build-engine")
def build_engine(run_dir: Annotated[Path, typer.Argument(help="A run folder holding student.int8.onnx.")]) -> None:
    """On the device: build the TensorRT engine for a run folder and measure it against the budget."""
    from edgekd.export.tensorrt_engine import build_engine_for_run

    out.print(build_engine_for_run(run_dir), highlight=False, markup=False)


def _bad(message: str) -> EdgekdError:
    from edgekd.errors import BadInputError

    return BadInputError(message)


def _printable(text: str) -> str:
    """Control characters from file names (an ESC that would recolour or clear the terminal) shown
    as escapes, never sent raw."""
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode() for ch in text)


def one_line(message: str) -> str:
    """An error's one line. An error raised in a data-loader worker arrives wrapped in the worker's
    traceback ("Caught X in DataLoader worker process 0. Original Traceback ..."): keep its last line,
    the error itself, without the exception's module path."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return _printable(message.strip())
    if len(lines) > 1 and lines[0].startswith("Caught ") and "Traceback" in message:
        last = lines[-1]
        head, sep, rest = last.partition(": ")
        return _printable(rest if sep and "." in head and " " not in head else last)
    return _printable(" ".join(lines))


OUT_OF_MEMORY = ("out of memory", "failed to allocate memory", "can't allocate memory", "cannot allocate memory")


def _out_of_memory(message: str) -> bool:
    """torch says it in its own words: CUDA's "out of memory", the CPU allocator's
    "DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes"."""
    return any(words in message.lower() for words in OUT_OF_MEMORY)


def _terminate(signum, _frame):
    raise KeyboardInterrupt


def run(argv: list[str] | None = None) -> int:
    """The whole command line as a function: an exit code, and one line on stderr for any error."""
    from edgekd.quiet import quiet_libraries

    quiet_libraries()
    err = Console(stderr=True)
    try:
        return int(app(args=argv, standalone_mode=False) or 0)
    except EdgekdError as error:
        err.print(f"edgekd: error: {one_line(str(error))}", highlight=False, soft_wrap=True, markup=False)
        return int(error.exit_code)
    except MemoryError as error:  # also torch's OutOfMemoryError on a GPU (a RuntimeError, below)
        err.print(f"edgekd: error: out of memory{': ' + one_line(str(error)) if str(error) else ''}; "
                  "use a smaller batch or image size", highlight=False, soft_wrap=True, markup=False)
        return int(ExitCode.ENVIRONMENT)
    except UnicodeDecodeError as error:  # every reader names its file; this is the net under them
        err.print(f"edgekd: error: an input file is not UTF-8 text ({error.reason} at byte {error.start})",
                  highlight=False, soft_wrap=True, markup=False)
        return int(ExitCode.BAD_INPUT)
    except UnicodeEncodeError as error:  # a name that is not UTF-8 reached a writer: the net under them
        bad = error.object[error.start:error.end] if isinstance(error.object, str) else ""
        err.print(f"edgekd: error: a file or folder name is not valid UTF-8 (near {bad.encode('utf-8', 'backslashreplace')!r}); "
                  "rename it", highlight=False, soft_wrap=True, markup=False)
        return int(ExitCode.BAD_INPUT)
    except RuntimeError as error:
        if not _out_of_memory(str(error)):
            raise  # a bug: the traceback is the report
        err.print(f"edgekd: error: out of memory ({one_line(str(error))[:200]}); use a smaller batch or image size",
                  highlight=False, soft_wrap=True, markup=False)
        return int(ExitCode.ENVIRONMENT)
    except (KeyboardInterrupt, typer.Abort):
        err.print("edgekd: interrupted; completed stages and the last epoch checkpoint are kept. "
                  "Resume with: edgekd compress --resume RUN_DIR", highlight=False, soft_wrap=True, markup=False)
        return int(ExitCode.INTERRUPTED)
    except typer.Exit as done:
        return done.exit_code
    except typer.TyperException as error:  # usage errors: unknown option, bad value
        message = error.format_message() if hasattr(error, "format_message") else str(error)
        if message.strip():  # no arguments: the help was printed, and there is nothing to add
            err.print(f"edgekd: error: {message}", highlight=False, soft_wrap=True, markup=False)
        return int(ExitCode.BAD_INPUT)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    # a shell starts background jobs with SIGINT ignored, and Python then installs no handler:
    # restore it, so an interrupt (or a CI runner's SIGINT) always stops cleanly
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(run())
