"""report.html: the run's report.json as a page a person reads, with its two plots.

One self-contained file (inline CSS, PNGs as data URIs, no script, nothing fetched) so it can be
mailed or attached to a CI job and still open; the PNGs are also kept beside it for slides.
Every latency says whether it was measured or estimated, as the report does.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from edgekd.runfolder import atomic_write_bytes, atomic_write_text

REPORT_HTML = "report.html"
ACCURACY_LATENCY_PNG = "accuracy_latency.png"
LAYERS_PNG = "layers.png"
PRUNE_PATH_PNG = "prune_path.png"  # only for the budget goal: latency and accuracy step by step
TOP_LAYERS = 20
MEASURED_COLOUR, ESTIMATED_COLOUR, BUDGET_COLOUR = "#1f6fb4", "#e07b00", "#c0392b"


def write_html(report: dict, run_dir: Path) -> Path:
    """Write report.html, accuracy_latency.png and layers.png into `run_dir`; return the HTML's path."""
    import matplotlib

    run_dir = Path(run_dir)
    plots = {}
    # names in labels (a target, a layer) are text: a "$...$" in one is not mathtext to render
    with matplotlib.rc_context({"text.parse_math": False}):
        for name, draw in ((ACCURACY_LATENCY_PNG, _accuracy_latency_png), (LAYERS_PNG, _layers_png)):
            png = draw(report)
            atomic_write_bytes(run_dir / name, png)
            plots[name] = png
        path_png = _prune_path_png(report)
    if path_png is not None:
        atomic_write_bytes(run_dir / PRUNE_PATH_PNG, path_png)
        plots[PRUNE_PATH_PNG] = path_png
    path = run_dir / REPORT_HTML
    atomic_write_text(path, _page(report, plots))
    return path


def render_run(run_dir: Path) -> Path:
    """`edgekd report RUN_DIR`: report.html and the plots again, from the folder's report.json
    (after an upgrade changed the page, say). A folder without a readable report is a one-line error."""
    import json

    from edgekd.errors import BadInputError

    run_dir = Path(run_dir)
    path = run_dir / "report.json"
    if not run_dir.is_dir():
        raise BadInputError(f"run folder not found: {run_dir}")
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise BadInputError(f"{run_dir}: no report.json (is it an edgekd run folder?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadInputError(f"{path}: not a readable report.json ({err})") from None
    if not isinstance(report, dict) or not isinstance(report.get("stages"), list) or not report["stages"]:
        raise BadInputError(f"{path}: not an edgekd report (no 'stages' list)")
    if report.get("task") == "detect":
        raise BadInputError(f"{path}: a detection run; report.html is written for classification runs only so far "
                            "(the detection report is report.json and what `edgekd compress` printed)")
    try:
        return write_html(report, run_dir)
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise BadInputError(f"{path}: not an edgekd report ({type(err).__name__}: {err})") from None


# ---------------------------------------------------------------- plots


def _figure(width: float, height: float):
    """A figure on the Agg canvas, without pyplot: no global backend switch, nothing left open."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _accuracy_latency_png(report: dict) -> bytes:
    import math

    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    figure = _figure(7.5, 4.6)
    axes = figure.add_subplot()
    stages = report["stages"]
    points = [(s["latency_ms"]["p50"], 100 * s["accuracy"]) for s in stages]
    limits = report.get("budget", {}).get("latency_ms", {})
    xs = [x for x, _ in points] + [v for v in limits.values() if v is not None]
    xs += [s["latency_estimate_ms"]["p50"] for s in stages if s.get("latency_estimate_ms")]
    xs = [x for x in xs if x > 0]
    log = bool(xs) and max(xs) / min(xs) > 20
    if log:  # plain numbers on the ticks: "0.05", not "5 x 10^-2"
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axes.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "25" else ""))
        axes.tick_params(axis="x", which="minor", labelsize=7)

    def position(point):  # roughly where it lands on the canvas, to keep labels apart
        x, y = point
        span_x = (math.log10(max(xs)) - math.log10(min(xs))) if log else (max(xs) - min(xs))
        span_y = max(p[1] for p in points) - min(p[1] for p in points)
        return ((math.log10(x) if log and x > 0 else x) / (span_x or 1), y / (span_y or 1))

    for index, stage in enumerate(stages):
        latency, estimate = stage["latency_ms"], stage.get("latency_estimate_ms")
        x, y = points[index]
        measured = latency["source"] == "measured"
        axes.scatter([x], [y], s=60, zorder=3, marker="o" if measured else "D",
                     color=MEASURED_COLOUR if measured else "white",
                     edgecolors=MEASURED_COLOUR if measured else ESTIMATED_COLOUR, linewidths=1.8)
        if measured and estimate is not None:  # the roofline's guess for the same file, joined to it
            axes.scatter([estimate["p50"]], [y], s=30, marker="D", color="white",
                         edgecolors=ESTIMATED_COLOUR, linewidths=1.2, zorder=3)
            axes.plot([x, estimate["p50"]], [y, y], color=ESTIMATED_COLOUR, lw=0.8, ls=":", zorder=2)
        here = position(points[index])
        others = [position(p) for i, p in enumerate(points) if i != index]
        nearest = min(others, key=lambda o: math.dist(o, here), default=None)
        below = nearest is not None and math.dist(nearest, here) < 0.15 and here[1] < nearest[1]
        axes.annotate(stage["name"], (x, y), xytext=(7, -13 if below else 5), textcoords="offset points", fontsize=9)

    handles = []
    if any(s["latency_ms"]["source"] == "measured" for s in stages):
        handles.append(Line2D([], [], ls="", marker="o", color=MEASURED_COLOUR, label="measured p50"))
    if any(s["latency_ms"]["source"] != "measured" or s.get("latency_estimate_ms") for s in stages):
        handles.append(Line2D([], [], ls="", marker="D", markerfacecolor="white", color=ESTIMATED_COLOUR,
                              label="estimated p50 (roofline)"))
    for key, style in (("p50", "-"), ("p99", "--")):
        if limits.get(key) is not None:
            axes.axvline(limits[key], color=BUDGET_COLOUR, ls=style, lw=1.4)
            handles.append(Line2D([], [], color=BUDGET_COLOUR, ls=style, label=f"budget {key} {_ms(limits[key])} ms"))
    axes.legend(handles=handles, fontsize=8, loc="best")
    axes.set_xlabel(f"p50 latency (ms) on {report['target']['name']}, batch {report['target']['batch']}")
    axes.set_ylabel("top-1 accuracy (%)")
    axes.set_title("Accuracy vs latency per stage", fontsize=11)
    axes.margins(x=0.08, y=0.12)
    axes.grid(True, alpha=0.3, which="both")
    return _png(figure)


def _layers_title(report: dict) -> str:
    layers = report.get("layers") or []
    stage = report.get("student", {}).get("stage", report["stages"][-1]["name"])
    if layers and all(layer.get("source") == "measured" for layer in layers):
        how = "measured by ONNX Runtime's profiler on this host"
    else:
        how = f"estimated by the roofline for {report['target']['name']}"
    return f"Per-layer latency of the final student ({stage}): {how}"


def _layers_png(report: dict) -> bytes:
    layers = sorted(report.get("layers") or [], key=lambda layer: layer["ms"], reverse=True)
    top = layers[:TOP_LAYERS]
    figure = _figure(9.0, 1.2 + 0.28 * max(len(top), 3))
    axes = figure.add_subplot()
    title = _layers_title(report)
    if not top:
        axes.text(0.5, 0.5, "no per-layer timings in this report", ha="center", va="center")
        axes.set_axis_off()
    else:
        labels = [f"{_shorten(layer['name'], 48)}  [{layer['op']}" +
                  (f", {layer['precision']}]" if layer.get("precision") else "]") for layer in top]
        values = [layer["ms"] for layer in top]
        colour = MEASURED_COLOUR if top[0].get("source") == "measured" else ESTIMATED_COLOUR
        positions = range(len(top))[::-1]  # slowest at the top
        bars = axes.barh(list(positions), values, color=colour)
        axes.set_yticks(list(positions), labels, fontsize=7.5, family="monospace")
        axes.bar_label(bars, [f"{v:.4f}" if v < 0.1 else f"{v:.3f}" for v in values], fontsize=7, padding=2)
        axes.set_xlim(0, max(max(values) * 1.15, 1e-6))
        axes.set_xlabel("ms per inference")
        total = sum(layer["ms"] for layer in layers)
        shown = f"top {len(top)} of {len(layers)} layers" if len(layers) > len(top) else f"all {len(layers)} layers"
        title += f"\n{shown}, {100 * sum(values) / total:.0f}% of the summed {total:.3f} ms" if total > 0 else ""
        axes.grid(True, axis="x", alpha=0.3)
    figure.suptitle(title, fontsize=9.5, x=0.01, ha="left")
    return _png(figure)


def _prune_fit(report: dict) -> tuple[list[dict], dict] | None:
    """The budget goal's path and verdict from the prune stage's details, if this run has them."""
    for stage in report["stages"]:
        details = stage.get("details") or {}
        if details.get("path") and details.get("budget_fit"):
            return details["path"], details["budget_fit"]
    return None


def _prune_path_png(report: dict) -> bytes | None:
    """Budget-driven pruning, step by step: INT8 latency on the target (with the budget and the goal
    under its margin) and validation top-1 (with the accuracy floor)."""
    found = _prune_fit(report)
    if found is None:
        return None
    path, fit = found
    figure = _figure(7.5, 4.6)
    latency_axes = figure.add_subplot()
    accuracy_axes = latency_axes.twinx()
    steps = [p["step"] for p in path]
    latency_axes.plot(steps, [p["latency_ms"] for p in path], "o-", color=ESTIMATED_COLOUR
                      if path[0]["latency_source"] != "measured" else MEASURED_COLOUR, label="INT8 p50 latency")
    latency_axes.axhline(fit["budget_ms"], color=BUDGET_COLOUR, lw=1.4, label=f"budget {_ms(fit['budget_ms'])} ms")
    latency_axes.axhline(fit["goal_ms"], color=BUDGET_COLOUR, lw=1.0, ls="--",
                         label=f"budget less margin {_ms(fit['goal_ms'])} ms")
    accuracy_axes.plot(steps, [100 * p["val_accuracy"] for p in path], "s-", color="#2e8b57", label="val top-1")
    if fit.get("floor") is not None:
        accuracy_axes.axhline(100 * fit["floor"], color="#2e8b57", lw=1.0, ls=":", label="accuracy floor")
    for p in path:
        if p.get("kept") is False:
            latency_axes.scatter([p["step"]], [p["latency_ms"]], marker="x", s=80, color=BUDGET_COLOUR, zorder=4)
        latency_axes.annotate(f"{p['macs'] / 1e6:.2f}M", (p["step"], p["latency_ms"]), xytext=(4, 5),
                              textcoords="offset points", fontsize=7)
    latency_axes.set_xlabel("pruning step (0: before pruning; labels: MACs; x: undone, below the floor)")
    latency_axes.set_ylabel(f"INT8 p50 latency (ms) on {report['target']['name']}")
    accuracy_axes.set_ylabel("validation top-1 (%)")
    handles = latency_axes.get_legend_handles_labels()
    more = accuracy_axes.get_legend_handles_labels()
    latency_axes.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="upper right")
    latency_axes.set_title(f"Pruning to the budget: {'fitted' if fit['met'] else 'not fitted'}", fontsize=11)
    latency_axes.grid(True, alpha=0.3)
    latency_axes.xaxis.get_major_locator().set_params(integer=True)
    return _png(figure)


def _prune_path_section(report: dict, png: bytes | None) -> str:
    found = _prune_fit(report)
    if found is None or png is None:
        return ""
    path, fit = found
    rows = "".join(
        f"<tr><td>{p['step']}</td><td class=\"left\">{_e(p.get('layer') or '')}</td>"
        f"<td>{p.get('removed', 0)}{'/' + str(p['channels']) if p.get('channels') else ''}</td>"
        f"<td>{_ms(p['latency_ms'])}</td><td>{100 * p['val_accuracy']:.2f}%</td><td>{p['macs'] / 1e6:.2f}M</td>"
        f"<td>{p['params']:,}</td><td>{'undone' if p.get('kept') is False else 'kept'}</td></tr>" for p in path)
    head = ("<tr><th>step</th><th class=\"left\">layer pruned</th><th>channels removed</th><th>INT8 p50 ms</th>"
            "<th>val top-1</th><th>MACs</th><th>params</th><th></th></tr>")
    return (f"<h2>Pruning to the budget</h2><p class=\"note\">{_e(fit['message'])}.</p>"
            f'<img src="{_data_uri(png)}" alt="latency and accuracy per pruning step, with the budget">'
            f"<table>{head}{rows}</table>")


# ---------------------------------------------------------------- page


def _e(value: object) -> str:
    return html.escape(str(value))


def _ms(value: float | None) -> str:
    if value is None:
        return "&ndash;"
    return f"{value:.3f}" if value < 100 else f"{value:.1f}"


def _size(size_bytes: int) -> str:
    return f"{size_bytes / 1024:.0f} KiB" if size_bytes < 1024 * 1024 else f"{size_bytes / 1024 / 1024:.2f} MiB"


def _shorten(text: str, width: int) -> str:
    """Keep the end of a long layer name: the op and its index live there."""
    return text if len(text) <= width else "\u2026" + text[-(width - 1):]


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d232a;
       max-width: 1100px; margin: 24px auto; padding: 0 20px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.meta { color: #5a6570; font-size: 13px; }
.verdict { border-radius: 6px; padding: 14px 18px; margin: 18px 0; border: 2px solid; }
.verdict.met { background: #e8f6ec; border-color: #2e8b57; } .verdict.missed { background: #fdecea; border-color: #c0392b; }
.verdict.notshown { background: #fdf6e3; border-color: #b58900; } .notshown .word { color: #8a6d00; }
.verdict .word { font-size: 24px; font-weight: 700; letter-spacing: 0.5px; }
.met .word { color: #1e7a45; } .missed .word { color: #b03025; }
.verdict .line { margin-top: 4px; }
.tag { display: inline-block; font-size: 11px; font-weight: 600; border-radius: 3px; padding: 0 5px; }
.tag.measured { background: #dbe9f6; color: #15568d; } .tag.estimated { background: #fcebd6; color: #a85a00; }
.tag.pass { background: #e8f6ec; color: #1e7a45; } .tag.fail { background: #fdecea; color: #b03025; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { padding: 5px 8px; border-bottom: 1px solid #e2e6ea; text-align: right; white-space: nowrap; }
th { background: #f3f5f7; font-weight: 600; } th:first-child, td:first-child { text-align: left; }
td.left, th.left { text-align: left; } tr.final td { font-weight: 600; }
.est { color: #a85a00; } .note { color: #5a6570; font-size: 12px; }
dl { display: grid; grid-template-columns: max-content auto; gap: 3px 16px; margin: 0; }
dt { color: #5a6570; } dd { margin: 0; }
img { max-width: 100%; border: 1px solid #e2e6ea; border-radius: 4px; }
code { font-size: 12px; background: #f3f5f7; padding: 0 3px; border-radius: 3px; }
"""


def _tag(source: str) -> str:
    kind = "measured" if source == "measured" else "estimated"
    return f'<span class="tag {kind}">{kind}</span>'


def _page(report: dict, plots: dict[str, bytes]) -> str:
    target = report["target"]
    dataset = report.get("dataset", {})
    title = f"edgekd: {report.get('profile', '?')} profile \u2192 {target['name']}"
    meta = [f"target {target['name']} ({target.get('runtime', '?')}, {target.get('precision', '?')}, "
            f"batch {target.get('batch', '?')}, {target.get('threads', '?')} threads, {target.get('machine', '?')})"]
    if dataset:
        meta.append(f"data {dataset.get('name', '?')} ({dataset.get('train', '?')} train / "
                    f"{dataset.get('test', '?')} test, input {'x'.join(map(str, dataset.get('input_shape', [])))})")
    meta.append(f"edgekd {report.get('edgekd_version', '?')}, {report.get('created', '')}, "
                f"{report.get('seconds', '?')} s")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<div class="meta">{"<br>".join(_e(m) for m in meta)}</div>',
        _verdict(report),
        "<h2>Stages</h2>",
        _stage_table(report),
        "<h2>Accuracy and latency</h2>",
        f'<img src="{_data_uri(plots[ACCURACY_LATENCY_PNG])}" alt="accuracy vs p50 latency per stage">',
        "<h2>Per-layer latency</h2>",
        f'<p class="note">{_e(_layers_title(report))}.</p>',
        f'<img src="{_data_uri(plots[LAYERS_PNG])}" alt="per-layer latency of the final student">',
        _prune_path_section(report, plots.get(PRUNE_PATH_PNG)),
        _reference(report),
        _artifacts(report),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def _verdict(report: dict) -> str:
    budget = report.get("budget")
    if not budget:
        return ""
    met = bool(budget.get("met"))
    state = budget.get("state") or ("MET" if met else "MISSED")
    source = budget.get("source", "?")
    checks = " ".join(f'<span class="tag {"pass" if ok else "fail"}">{_e(name)} {"ok" if ok else "over"}</span>'
                      for name, ok in (budget.get("checks") or {}).items())
    caution = ""
    if source != "measured":
        caution = ('<div class="line note">This verdict rests on a roofline estimate, not a measurement: '
                   "run <code>edgekd bench</code> on the device to confirm it.</div>")
    lines = [budget.get("verdict", ""), (budget.get("accuracy") or {}).get("verdict"),
             (budget.get("teacher") or {}).get("line")]
    css = {"MET": "met", "NOT SHOWN": "notshown"}.get(state, "missed")
    return (f'<div class="verdict {css}">'
            f'<span class="word">BUDGET {_e(state)}</span> {_tag(source)} {checks}'
            + "".join(f'<div class="line">{_e(line)}</div>' for line in lines if line) + f'{caution}</div>')


def _stage_table(report: dict) -> str:
    stages = report["stages"]
    # estimate columns only where some stage has both; for an estimated target they would repeat p50
    both = any(s["latency_ms"]["source"] == "measured" and s.get("latency_estimate_ms") for s in stages)
    head = ("<tr><th>stage</th><th>top-1</th><th>params</th><th>MACs</th><th>size</th>"
            "<th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th class=\"left\">latency</th>"
            + ("<th>estimate p50 ms</th><th>measured / estimate</th>" if both else "") + "<th>time s</th></tr>")
    rows, notes, runtimes = [], [], []
    for index, stage in enumerate(stages):
        lat, est = stage["latency_ms"], stage.get("latency_estimate_ms")
        measured = lat["source"] == "measured"
        if measured and est:
            est_cell, ratio = f'<span class="est">{_ms(est["p50"])}</span>', f"{lat['p50'] / est['p50']:.2f}"
        else:
            est_cell, ratio = "&ndash;", "&ndash;"
        note = stage.get("latency_note") or ""
        note = (f"Measured off the target's device: {note}" if measured else f"Estimated, not measured: {note}") \
            if note else ""
        if note and note not in notes:
            notes.append(note)
        name = _e(stage["name"]) + (' <span class="note">(resumed)</span>' if stage.get("resumed") else "")
        how = f"{lat['runs']} runs" if measured and lat.get("runs") else ""
        if lat.get("runtime") and lat["runtime"] not in runtimes:
            runtimes.append(lat["runtime"])
        row_class = ' class="final"' if index == len(stages) - 1 else ""
        rows.append(
            f"<tr{row_class}>"
            f"<td>{name}</td><td>{100 * stage['accuracy']:.2f}%</td><td>{stage['params']:,}</td>"
            f"<td>{stage['macs'] / 1e6:.2f}M</td><td>{_size(stage['size_bytes'])}</td>"
            f"<td>{_ms(lat['p50'])}</td><td>{_ms(lat['p90'])}</td><td>{_ms(lat['p99'])}</td>"
            f'<td class="left">{_tag(lat["source"])} <span class="note">{how}</span></td>'
            + (f"<td>{est_cell}</td><td>{ratio}</td>" if both else "")
            + f"<td>{stage.get('seconds', 0):g}</td></tr>"
        )
    batch = report["target"].get("batch", stages[-1]["latency_ms"].get("batch", "?"))
    footer = [f"Latency per call at batch {_e(batch)} ({_e('; '.join(runtimes))}); the last row is the "
              "student that ships."
              + (" The estimate is the per-layer roofline for the target, shown beside each measurement." if both else "")]
    footer += [f"{_e(n)}." for n in notes]
    return (f"<table>{head}{''.join(rows)}</table>"
            + "".join(f'<p class="note">{f}</p>' for f in footer))


def _reference(report: dict) -> str:
    ref = report.get("reference")
    if not ref:
        return ""
    items = [("normalised latency", f"<b>{ref['normalised_latency']:.3f}</b> "
              "(student p50 / reference p50, both timed here in this run; what <code>edgekd check</code> compares)")]
    for key, label in (("student_ms", "student on this host"), ("reference_ms", "reference on this host")):
        lat = ref.get(key)
        if lat:
            items.append((label, f"p50 {_ms(lat['p50'])} ms, p90 {_ms(lat['p90'])} ms, p99 {_ms(lat['p99'])} ms "
                                 f'<span class="note">({_e(lat.get("runtime", ""))}, batch {_e(lat.get("batch", "?"))}, '
                                 f'{_e(lat.get("runs", "?"))} runs)</span>'))
    items.append(("reference model", _e(ref.get("model", "?"))
                  + (f' <span class="note">({_e(ref["onnx"])})</span>' if ref.get("onnx") else "")))
    body = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in items)
    return f"<h2>Reference (for the regression gate)</h2><dl>{body}</dl>"


def _artifacts(report: dict) -> str:
    files = {key: value for key, value in (report.get("artifacts") or {}).items() if value}
    for key, value in (("report_html", REPORT_HTML), ("accuracy_latency_png", ACCURACY_LATENCY_PNG),
                       ("layers_png", LAYERS_PNG)):
        files.setdefault(key, value)
    body = "".join(f'<dt>{_e(key)}</dt><dd><a href="{_e(value)}">{_e(value)}</a></dd>' for key, value in files.items())
    return f'<h2>Artifacts</h2><p class="note">Relative to the run folder.</p><dl>{body}</dl>'
