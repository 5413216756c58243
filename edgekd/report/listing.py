"""What the command line prints: tables that fit 80 columns, and the `--json` forms.

Names, aliases and budgets are never cut: their columns do not wrap and have a minimum width,
and long cells (descriptions, why a target is estimated) live in `show`, not in the listings.
On a terminal a table has a header rule; through a pipe it is plain text (no box drawing, no
colour, 80 columns or $COLUMNS), so a CI log and `grep` see the same words every time.
The JSON forms are what CI scripts read; their keys are documented in the README and stable.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING

from rich import box as rich_box
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # `edgekd --version` and `--help` need no pydantic models
    from edgekd.config import Profile, Target


def console() -> Console:
    """stdout's console: the terminal's width on a terminal, $COLUMNS (default 80) in a pipe.

    Rich alone would take the width of whichever of stdin/stderr is a terminal, so the same
    command piped into a file would wrap differently in different windows."""
    if sys.stdout.isatty():
        return Console()
    columns = os.environ.get("COLUMNS", "")
    return Console(width=int(columns) if columns.isdigit() and int(columns) > 0 else 80)


def new_table(boxed: bool) -> Table:
    """A table with a header rule when `boxed`, else whitespace only; no outer padding."""
    # padding right only: two spaces between columns with or without the box's blank separator
    return Table(box=rich_box.SIMPLE_HEAD if boxed else None, pad_edge=False, show_edge=False,
                 padding=(0, 1, 0, 0) if boxed else (0, 1), header_style="bold" if boxed else "")


def wants_box(out: Console, asked: bool | None) -> bool:
    """`--box` / `--no-box` when given; otherwise a header rule on a terminal and none in a pipe."""
    return out.is_terminal if asked is None else asked


def print_table(out: Console, table: Table) -> None:
    """Print `table` with no trailing blanks on its lines (rich pads every cell to its column)."""
    with out.capture() as captured:
        out.print(table)
    text = "\n".join(line.rstrip() for line in captured.get().splitlines())
    out.file.write(text + "\n")
    out.file.flush()


def emit_json(payload: object) -> None:
    """JSON on stdout alone: the one thing a `--json` command prints there."""
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    sys.stdout.flush()


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


# ---------------------------------------------------------------- targets


def target_json(target: Target) -> dict:
    """`targets show --json`: every validated field, defaults filled in, plus the p50 budget an
    fps budget implies (`budget_p50_ms`), whether this machine
    measures the target's latency (`latency_source`) and, where not, why (`latency_note`)."""
    from edgekd.measure.target_latency import measurable_here

    here, why = measurable_here(target)
    fields = target.model_dump(mode="json")
    fields["activations"] = target.activation_scheme.value  # the file may leave it to the runtime's default
    return {**fields, "budget_p50_ms": target.budget_p50_ms,
            "latency_source": "measured" if here else "estimated", "latency_note": why}


def targets_table(targets: list[Target], boxed: bool) -> tuple[Table, list[str]]:
    """The `targets list` table and the lines printed under it (aliases, what "estimated" means)."""
    table = new_table(boxed)
    table.add_column("name", no_wrap=True, overflow="fold", min_width=max([4, *(len(t.name) for t in targets)]))
    table.add_column("runtime", overflow="fold")  # the rest wrap (then fold) before anything is cut
    table.add_column("batch", justify="right", overflow="fold")
    table.add_column("p50/p99 ms", no_wrap=True, overflow="fold")
    table.add_column("memory", overflow="fold")
    table.add_column("latency", overflow="fold")
    estimated = False
    for target in targets:
        shown = target_json(target)
        estimated = estimated or shown["latency_source"] == "estimated"
        memory = target.budget.memory_mb
        table.add_row(target.name, f"{target.runtime.value} {target.precision.value}", str(target.input.batch),
                      f"{_number(target.budget_p50_ms)} / {_number(target.budget.latency_p99_ms)}",
                      "-" if memory is None else f"{memory:g} MB", shown["latency_source"])
    notes = [f"alias: {alias} = {t.name}" for t in targets for alias in t.aliases]
    if estimated:
        notes.append("estimated: not measurable here; `edgekd targets show NAME` says why")
    return table, notes


# ---------------------------------------------------------------- profiles


def profile_json(profile: Profile) -> dict:
    """`profiles show --json`: every validated field of the recipe, defaults filled in."""
    return profile.model_dump(mode="json")


def profiles_table(profiles: list[Profile], boxed: bool) -> Table:
    table = new_table(boxed)
    table.add_column("name", no_wrap=True, overflow="fold", min_width=max([4, *(len(p.name) for p in profiles)]))
    for column in ("student", "distill", "prune", "quantize"):
        table.add_column(column, overflow="fold")
    for p in profiles:
        prune = f"{100 * p.prune.ratio:g}% of {p.prune.by}" if p.prune.enabled else "off"
        if not p.quantize.enabled:
            quant = "off"
        elif p.quantize.method == "qat" and p.quantize.epochs > 0:
            quant = f"qat, {p.quantize.epochs} ep"
        else:
            quant = "ptq"
        table.add_row(p.name, f"{p.student.arch} x{p.student.width:g}",
                      f"{p.distill.epochs} ep", prune, quant)
    return table


# ---------------------------------------------------------------- show (people)


def field_lines(data: dict, indent: int = 0) -> list[str]:
    """`key: value` lines, nested tables indented: what `show` prints for people."""
    lines = []
    for key, value in data.items():
        pad = " " * indent
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:")
            lines += field_lines(value, indent + 2)
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: {', '.join(str(v) for v in value) or '-'}")
        elif value is None:
            lines.append(f"{pad}{key}: -")
        elif isinstance(value, bool):
            lines.append(f"{pad}{key}: {'true' if value else 'false'}")
        else:
            lines.append(f"{pad}{key}: {value}")
    return lines


# ---------------------------------------------------------------- compress's final table


def _size(size_bytes: int) -> str:
    return f"{size_bytes / 1024:.0f} KiB" if size_bytes < 10 * 1024 * 1024 else f"{size_bytes / 1024 ** 2:.1f} MiB"


def _macs(macs: float) -> str:
    return f"{macs / 1e6:.2f}M" if macs < 1e9 else f"{macs / 1e9:.2f}G"


def stage_table(report: dict, boxed: bool) -> tuple[Table, list[str]]:
    """The table `edgekd compress` ends with, and the notes under it."""
    table = new_table(boxed)
    table.add_column("stage", no_wrap=True, overflow="fold", min_width=8)
    for column in ("top-1", "params", "MACs", "size", "p50 ms", "p99 ms"):
        table.add_column(column, justify="right", no_wrap=True, overflow="fold")
    table.add_column("latency", no_wrap=True, overflow="fold")
    resumed = False
    for stage in report["stages"]:
        lat = stage["latency_ms"]
        resumed = resumed or bool(stage.get("resumed"))
        table.add_row(stage["name"] + ("*" if stage.get("resumed") else ""), f"{100 * stage['accuracy']:.2f}%",
                      f"{stage['params']:,}", _macs(stage["macs"]), _size(stage["size_bytes"]),
                      f"{lat['p50']:.3f}", "-" if lat["p99"] is None else f"{lat['p99']:.3f}",
                      lat["source"] if stage.get("latency_on_target") or lat["source"] != "measured"
                      else "off-device")
    notes = ["* resumed: completed by an earlier run in this folder"] if resumed else []
    if any(stage["latency_ms"]["p99"] is None for stage in report["stages"]):
        notes.append("p99 -: an estimate has no p99 (not estimated)")
    return table, notes


def detection_table(report: dict, boxed: bool) -> Table:
    """`edgekd compress --task detect`'s table: mAP of each stage's file on the reported split."""
    table = new_table(boxed)
    table.add_column("stage", no_wrap=True, overflow="fold", min_width=8)
    for column in ("mAP50", "mAP", "params", "MACs", "size", "p50 ms"):
        table.add_column(column, justify="right", no_wrap=True, overflow="fold")
    table.add_column("latency", no_wrap=True, overflow="fold")
    for stage in report["stages"]:
        lat, scores = stage["latency_ms"], stage["reported"]
        table.add_row(stage["name"] + ("*" if stage.get("resumed") else ""), f"{scores['map50']:.2f}",
                      f"{scores['map']:.2f}", f"{stage['params']:,}", _macs(stage["macs"]), _size(stage["size_bytes"]),
                      f"{lat['p50']:.3f}", lat["source"] if stage.get("latency_on_target") or lat["source"] != "measured"
                      else "off-device")
    return table
