"""The run folder: atomic writes and the record of which stages are complete.

A file is written to a temporary name, fsynced, then renamed, so a killed run never leaves a
half-written file under a final name. A stage counts as complete only when its marker
(`stages/NAME.done.json`) exists, names the fingerprint of its inputs and config, and the
checksums of its files still match.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from edgekd.errors import BadInputError, EnvironmentProblem, ExitCode


@contextmanager
def disk_errors(path: Path):
    """Turn OS errors while writing into a one-line message that says what the disk did."""
    try:
        yield
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise EnvironmentProblem(f"disk full while writing {path}; free space and resume with --resume") from None
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise EnvironmentProblem(f"cannot write {path}: {err.strerror} (choose another --run-dir)") from None
        raise EnvironmentProblem(f"cannot write {path}: {err.strerror or err}") from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide reports from colleagues
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    # a file name that is not UTF-8 (kept by Python as surrogates) is written escaped, not refused
    atomic_write_bytes(path, text.encode("utf-8", "backslashreplace"))


def atomic_write_json(path: Path, payload: object) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(payload: object, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


@contextmanager
def atomic_output(path: Path):
    """For writers that want a file name (ONNX export): write to a temporary path, then rename."""
    path = Path(path)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)  # O_EXCL: ours
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        finally:
            tmp.unlink(missing_ok=True)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class RunFolder:
    """One run's files. Stage markers make `--resume` skip only what is really done."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.run_id = ""

    def retire_report(self) -> None:
        """Rename an earlier report out of the way before this run writes anything, so a run that
        fails or is interrupted never leaves a report.json that looks like its own."""
        for name in ("report.json", "report.html"):
            old = self.root / name
            if old.exists():
                with disk_errors(old):
                    os.replace(old, old.with_name(name.replace("report.", "report.previous.")))

    def create(self) -> "RunFolder":
        with disk_errors(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=self.root)  # a new file, never a planted link
            os.close(fd)
            os.unlink(probe)
        return self

    def path(self, name: str) -> Path:
        return self.root / name

    def relative(self, path: Path) -> str:
        return str(Path(path).relative_to(self.root))

    def _marker(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.done.json"

    def mark_done(self, stage: str, fingerprint: str, record: dict, files: list[Path]) -> None:
        marker = {
            "fingerprint": fingerprint,
            "record": record,
            "files": {self.relative(f): sha256(f) for f in files},
        }
        atomic_write_json(self._marker(stage), marker)

    def completed(self, stage: str, fingerprint: str, needs: str = "test_correct") -> dict | None:
        """The stage's record if it completed with this fingerprint and its files are intact, and the
        record holds `needs` (the per-image results the verdict reads)."""
        marker = self._marker(stage)
        if not marker.is_file():
            return None
        try:
            done = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if done.get("fingerprint") != fingerprint or needs not in done.get("record", {}):
            return None  # another config, or an older edgekd's record without per-image test results
        for name, digest in done.get("files", {}).items():
            file = self.root / name
            if not file.is_file() or sha256(file) != digest:
                return None
        return done["record"]


# ---------------------------------------------------------------- ownership and the lock

FP32_ONNX = "student.fp32.onnx"  # the deployable files every run writes at its top
INT8_ONNX = "student.int8.onnx"
OWNER = ".edgekd-run.json"  # written by edgekd in every folder it creates: the run's id
LOCK = ".edgekd.lock"  # flock()ed for the run's lifetime; holds the holder's pid, host and start


def _link_refusal(root: Path, link: Path) -> str:
    return (f"run folder {root} holds a symbolic link, {link.relative_to(root)} -> {os.readlink(link)}: edgekd writes "
            "only files it created in the run folder; remove the link")


def refuse_links(root: Path) -> None:
    """A run writes only regular files it created in its own folder: a symbolic link (or a FIFO,
    a device) planted there, which a write would follow out of the folder, is refused up front."""
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            entry = Path(folder) / name
            mode = os.lstat(entry).st_mode
            if stat.S_ISLNK(mode):
                raise BadInputError(_link_refusal(root, entry))
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise BadInputError(f"run folder {root}: {entry.relative_to(root)} is not a regular file; remove it")


def remove_orphans(root: Path) -> None:
    """Temporary files a killed run left (`.NAME.*.tmp`, `.NAME.*.partial`: edgekd's own names, never a
    final one): removed once the folder is locked, so no one else can be writing them."""
    with disk_errors(root):
        for pattern in (".*.tmp", ".*.partial"):
            for orphan in root.rglob(pattern):
                if orphan.is_file() and not orphan.is_symlink():
                    orphan.unlink()


def _holder(lock: Path) -> str:
    try:
        who = json.loads(lock.read_text())
        return f"pid {who['pid']} on {who['host']}, started {who['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another edgekd process"


def _edgekd_files(root: Path) -> list[str]:
    """What in `root` shows a run left results: stage markers or a report."""
    found = [p.name for p in (root / "stages").glob("*.done.json")] if (root / "stages").is_dir() else []
    return found + [n for n in ("report.json",) if (root / n).exists()]


def _refusal(root: Path, resume: bool, overwrite: bool) -> str | None:
    """Why a run may not write into the existing folder `root` (None: it may)."""
    if not root.is_dir():
        return None  # the write probe says what is in the way
    entries = [p.name for p in root.iterdir() if p.name != LOCK]
    if not entries or overwrite:
        return None
    if resume:
        return None if (root / OWNER).is_file() or (root / "options.json").is_file() else \
            f"{root} is not an edgekd run folder (no options.json)"
    if (root / OWNER).is_file():
        if not _edgekd_files(root):
            return None  # an earlier attempt that completed nothing: nothing to lose
        return (f"{root} holds an earlier edgekd run: continue it with --resume {root}, "
                f"replace it with --overwrite, or choose another --run-dir")
    return (f"{root} is not empty and was not created by edgekd ({len(entries)} entries, e.g. {sorted(entries)[0]}); "
            f"choose a new --run-dir, or pass --overwrite to write into it anyway")


def unique_folder(base: Path) -> Path:
    """Create `base` (or `base-2`, `base-3`, ...) atomically: the first name no other run has taken."""
    with disk_errors(base):
        base.parent.mkdir(parents=True, exist_ok=True)
        for n in range(1, 1000):
            candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                continue
    raise EnvironmentProblem(f"cannot find a free run folder name beside {base}")


class RunLock:
    """An exclusive flock() on the run folder's lock file, held until `release()` (or exit)."""

    def __init__(self, root: Path):
        import fcntl
        import socket
        import datetime as dt

        self.path = root / LOCK
        try:
            with disk_errors(self.path):
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
        except EnvironmentProblem:
            if self.path.is_symlink():
                raise BadInputError(_link_refusal(root, self.path)) from None
            raise
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            os.close(self._fd)
            raise BadInputError(f"run folder {root}: {LOCK} is not a regular file; remove it")
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise BadInputError(f"run folder {root} is in use by {_holder(self.path)}; "
                                f"wait for it, or choose another --run-dir") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": dt.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(holder).encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def claim(root: Path | None, default: Path, *, resume: bool = False, overwrite: bool = False) -> tuple["RunFolder", RunLock]:
    """The run folder this run may write into, locked for it; or a one-line refusal (exit 2).

    A new folder (the default name, made unique, or a `--run-dir` that does not exist) is created
    and marked with a new run id. An existing folder is used only when it is empty, when edgekd
    created it and no stage of it completed, with `--resume`, or with `--overwrite`."""
    import uuid

    created = False
    if root is None:
        root, created = unique_folder(default), True
    else:
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise BadInputError(f"--run-dir {root} is a file, not a folder")
        try:
            with disk_errors(root):
                root.parent.mkdir(parents=True, exist_ok=True)
                root.mkdir()
            created = True
        except EnvironmentProblem:
            if not root.is_dir():
                raise
        except FileExistsError:
            pass
    why = None if created else _refusal(root, resume, overwrite)
    if why:
        raise BadInputError(why)
    lock = RunLock(root)
    try:
        why = None if created else _refusal(root, resume, overwrite)  # again, now that no one else can write
        if why:
            raise BadInputError(why)
        refuse_links(root)
        remove_orphans(root)
        run = RunFolder(root).create()
        owner = root / OWNER
        if not resume or not owner.is_file():  # a new run gets a new id; a resumed one keeps its own
            atomic_write_json(owner, {"run_id": uuid.uuid4().hex, "created": _now()})
        run.run_id = json.loads(owner.read_text()).get("run_id", "")
        if overwrite and not resume:  # a fresh run: nothing of the old one counts as done
            for stale in [*(root / "stages").glob("*.done.json"), *(root / "progress").glob("*.pt")]:
                stale.unlink()
        run.retire_report()
    except BaseException:
        lock.release()
        raise
    return run, lock


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def claim_on_rank0(root: Path | None, default: Path, *, resume: bool, overwrite: bool) -> tuple["RunFolder", RunLock | None]:
    """`claim` on rank 0 only (under torchrun); every rank gets the folder, or the same one-line error."""
    from edgekd import distributed

    outcome, lock = None, None
    if distributed.is_main():
        try:
            run, lock = claim(root, default, resume=resume, overwrite=overwrite)
            outcome = ("ok", str(run.root), run.run_id)
        except EnvironmentProblem as err:
            outcome = ("environment", str(err), "")
        except Exception as err:  # BadInputError, and anything else: the other ranks must not hang
            outcome = ("bad" if isinstance(err, BadInputError) else "bug", str(err), "")
            if not distributed.is_distributed():
                raise
    outcome = distributed.broadcast(outcome)
    kind, text, run_id = outcome
    if kind == "ok":
        run = RunFolder(Path(text))
        run.run_id = run_id
        return run, lock
    raise (EnvironmentProblem if kind == "environment" else BadInputError if kind == "bad" else RuntimeError)(text)


@dataclass(frozen=True)
class RunResult:
    """What one compression (classifier or detector) hands back: its report, folder and exit code."""

    report: dict
    run_dir: Path
    exit_code: ExitCode


def resumable(body, run_dir: Path | None):
    """`body(claimed)` for one compression: it puts the run folder ("run_dir") and its lock ("lock") in
    `claimed` once it has them. Ctrl-C becomes the one-line `Interrupted` naming the folder to resume, and
    the lock is released however the run ends."""
    from edgekd.errors import Interrupted

    claimed: dict = {}
    try:
        return body(claimed)
    except KeyboardInterrupt:
        run_dir = claimed.get("run_dir", run_dir)
        raise Interrupted(f"interrupted; completed stages and the last epoch checkpoint are kept in {run_dir}. "
                          f"Resume with: edgekd compress --resume {run_dir}") from None
    finally:
        if claimed.get("lock") is not None:
            claimed["lock"].release()
