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
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from edgekd.errors import EnvironmentProblem


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
    atomic_write_bytes(path, text.encode())


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
        tmp = path.with_name(f".{path.name}.partial")
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

    def create(self) -> "RunFolder":
        with disk_errors(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
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

    def completed(self, stage: str, fingerprint: str) -> dict | None:
        """The stage's record if it completed with this fingerprint and its files are intact."""
        marker = self._marker(stage)
        if not marker.is_file():
            return None
        try:
            done = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if done.get("fingerprint") != fingerprint:
            return None
        for name, digest in done.get("files", {}).items():
            file = self.root / name
            if not file.is_file() or sha256(file) != digest:
                return None
        return done["record"]
