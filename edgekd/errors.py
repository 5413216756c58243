"""Errors a user can act on, each with the exit code the CLI returns for it.

Anything raised as an `EdgekdError` is printed as one line, never as a traceback.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes; the README documents them, CI scripts branch on them."""

    OK = 0
    INTERNAL = 1  # a bug in edgekd: the one case that prints a traceback
    BAD_INPUT = 2  # a file, flag, data set or checkpoint that cannot be used
    BUDGET_MISSED = 3  # the pipeline finished but the student misses the target's budget
    REGRESSION = 4  # `edgekd check`: slower or less accurate than the baseline
    ENVIRONMENT = 5  # disk full, unwritable run folder, missing runtime
    NOT_SHOWN = 6  # a budget's measured value is within it, but the evidence cannot rule out a miss
    INTERRUPTED = 130  # Ctrl-C / SIGTERM; the run folder can be resumed


class EdgekdError(Exception):
    exit_code = ExitCode.INTERNAL


class BadInputError(EdgekdError):
    """Something the user handed us is wrong: say what and where."""

    exit_code = ExitCode.BAD_INPUT


class TrainingDiverged(BadInputError):
    """A NaN or infinite loss: a recipe problem (exit 2) in every stage but QAT, whose guard
    catches it and rolls the attempt back (stages/quantize.py)."""


class EnvironmentProblem(EdgekdError):
    """The machine, not the input, stops us: disk, permissions, a missing runtime."""

    exit_code = ExitCode.ENVIRONMENT


class Interrupted(EdgekdError):
    exit_code = ExitCode.INTERRUPTED


def budget_exit_code(budget: dict) -> ExitCode:
    """A finished run's exit code from its report's budget: MET 0, MISSED 3, NOT SHOWN 6 (0 where
    the profile says `[accuracy] not_shown = "pass"`)."""
    state = budget.get("state") or ("MET" if budget["met"] else "MISSED")  # reports from before the three states
    if state == "MET" or (state == "NOT SHOWN" and budget.get("not_shown_passes")):
        return ExitCode.OK
    return ExitCode.NOT_SHOWN if state == "NOT SHOWN" else ExitCode.BUDGET_MISSED
