"""Progress bars (rich) for epochs and benchmark runs; silent off rank 0 and when asked."""

from __future__ import annotations

import os
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


def _quiet() -> bool:
    return os.environ.get("EDGEKD_QUIET") == "1" or int(os.environ.get("RANK", "0")) != 0


@contextmanager
def progress_bar(description: str, total: int):
    """Yields `advance(**fields)`; one call per step."""
    if _quiet():
        yield lambda **fields: None
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, status="")

        def advance(**fields):
            status = " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
            progress.update(task, advance=1, status=status)

        yield advance


def info(message: str, *, user_text: str = "") -> None:
    """A progress line; `message` may carry edgekd's own colour markup, `user_text` (a path, a
    name) is appended as plain text, never read as markup."""
    if not _quiet():
        from rich.markup import escape

        console.print(message + escape(user_text))
