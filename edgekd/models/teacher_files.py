"""Teacher files from an untrusted source: nothing in them runs while edgekd reads them.

`torch.export.load` unpickles several archive entries with `weights_only=False` (legacy weight and
constant files, weights saved "with pickle", custom and opaque objects) and falls back to unrestricted
unpickling for the sample inputs: a crafted `.pt2` would run code before any check. So an archive is
inspected first (an allow-list of entries and payload configs), and then loaded with every
`torch.load` forced to `weights_only=True`. TorchScript is code by design: it loads only with
`--trust-torchscript`.
"""

from __future__ import annotations

import json
import os
import re
import stat
import zipfile
from contextlib import contextmanager
from pathlib import Path

from edgekd.errors import BadInputError

MAX_CONFIG_BYTES = 64 << 20  # a weights/constants config (JSON) larger than this is no real archive

# entries of a torch.export.save archive (torch >= 2.8 "pt2" format), below its root folder; nothing
# else is read. Raw tensor bytes and JSON are data; the sample inputs are a torch.save pickle,
# checked with weights_only=True before torch sees them.
_ALLOWED = [re.compile(p) for p in (
    r"archive_format", r"archive_version", r"byteorder", r"\.data/version", r"\.data/serialization_id",
    r"models/[\w.-]+\.json", r"data/weights/weight_\d+", r"data/weights/[\w.-]+_weights_config\.json",
    r"data/constants/tensor_\d+", r"data/constants/[\w.-]+_constants_config\.json",
    r"data/sample_inputs/[\w.-]+\.pt", r"extra/[^/]+",
)]
TRUST_FLAG = "--trust-torchscript"


def require_regular_file(path: Path, what: str = "teacher") -> None:
    """A regular, non-empty file, checked before it is opened: /dev/zero would be read until memory
    runs out, a FIFO would block forever, an empty file is no model."""
    try:
        info = os.stat(path)
    except OSError as err:
        raise BadInputError(f"{what} {path}: cannot read it ({err.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise BadInputError(f"{what} {path} is a folder, not a checkpoint file")
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device" if stat.S_ISCHR(info.st_mode) or \
            stat.S_ISBLK(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file"
        raise BadInputError(f"{what} {path} is {kind}, not a regular file")
    if info.st_size == 0:
        raise BadInputError(f"{what} {path}: empty file")


def _refuse(path: Path, why: str) -> BadInputError:
    return BadInputError(f"{path}: refused as a torch.export archive: {why}; edgekd loads only archives "
                         "written by torch.export.save, whose weights are raw tensors (see docs/bad_input.md)")


def inspect_pt2(path: Path) -> None:
    """Refuse an archive holding anything torch would unpickle unsafely, before torch opens it."""
    import io

    import torch

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise BadInputError(f"{path}: not a loadable torch.export archive ({type(err).__name__})") from None
    with archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]
        roots = {n.split("/", 1)[0] for n in names}
        if len(roots) != 1 or any("/" not in n for n in names):
            raise _refuse(path, "not one root folder (an older or foreign archive format)")
        root = roots.pop() + "/"
        inner = {n[len(root):]: n for n in names}
        if "archive_format" not in inner or archive.read(inner["archive_format"]).strip() != b"pt2":
            raise _refuse(path, "no 'archive_format' entry saying pt2 (an older archive format, read with pickle)")
        for name in inner:
            if not any(p.fullmatch(name) for p in _ALLOWED):
                raise _refuse(path, f"it holds {root}{name}, which edgekd does not read (torch would unpickle "
                                    "it or load it as code)")
        for name, full in inner.items():
            if name.endswith(("_weights_config.json", "_constants_config.json")):
                _check_payload_config(path, full, archive)
            elif name.startswith("data/sample_inputs/"):
                try:
                    torch.load(io.BytesIO(archive.read(full)), map_location="cpu", weights_only=True)
                except Exception as err:
                    raise _refuse(path, f"{full} is not plain tensors ({type(err).__name__})") from None


def _check_payload_config(path: Path, name: str, archive: zipfile.ZipFile) -> None:
    if archive.getinfo(name).file_size > MAX_CONFIG_BYTES:
        raise _refuse(path, f"{name} is over {MAX_CONFIG_BYTES >> 20} MiB")
    try:
        config = json.loads(archive.read(name)).get("config", {})
    except (ValueError, AttributeError):
        raise _refuse(path, f"{name} is not a JSON payload config") from None
    if not isinstance(config, dict):
        raise _refuse(path, f"{name} is not a JSON payload config")
    for key, meta in config.items():
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise _refuse(path, f"'{key}' in {name} is stored with pickle")
        if not str(meta.get("path_name", "")).startswith(("weight_", "tensor_")):
            raise _refuse(path, f"'{key}' in {name} is a custom object ({meta.get('path_name')!r}), read with pickle")


@contextmanager
def weights_only_loads():
    """Every torch.load inside is weights_only=True, whatever its caller asked (torch's own switch)."""
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


def load_pt2(path: Path):
    """torch.export.load of an inspected archive, with unpickling restricted to tensors."""
    import torch

    inspect_pt2(path)
    with weights_only_loads():
        return torch.export.load(str(path))


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip with a code/ folder (its Python-like source is run on load)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in n for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def require_trusted_torchscript(path: Path, trusted: bool) -> None:
    if not trusted:
        raise BadInputError(f"{path} is TorchScript, which is code and runs when loaded: load it only from a "
                            f"source you trust, with {TRUST_FLAG} (safe from any source: an edgekd checkpoint, "
                            "a state dict, or a torch.export .pt2)")
