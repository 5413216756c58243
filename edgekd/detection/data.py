"""Detection data: boxes, COCO and YOLO files, and an offline synthetic set cut from real clip art.

Readers check every box (non-finite numbers, an unknown class id, zero or negative area, outside
the image) and either refuse the file with one line or drop the box and count it, as the caller
chooses. Writers refuse the same boxes and write the rest so that both readers read them back
exactly. Nothing here downloads: the synthetic set comes from Debian's `openclipart-png` package.
"""

from __future__ import annotations

import enum
import json
import math
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from edgekd.errors import BadInputError, EnvironmentProblem
from edgekd.runfolder import disk_errors

CLIPART_DIR = Path(os.environ.get("EDGEKD_OPENCLIPART", "/usr/share/openclipart/png"))
SPLITS = ("train", "val", "test")
EDGE_TOLERANCE = 1.0  # pixels a box may reach past the image edge (other tools' rounding); it is then clipped
DEFAULT_IMAGE_SIZE = 160  # the square working size a reader's DetectionSet resizes to unless told otherwise
YOLO_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}

# why a box is refused or dropped: the keys of the counts a reader returns
NON_FINITE = "non-finite numbers"
UNKNOWN_CLASS = "unknown class id"
NO_AREA = "zero or negative area"
OUTSIDE = "outside the image"
CROWD = "crowd region (iscrowd=1)"  # COCO only: a region around many objects, never a box; always skipped


class BadBoxes(enum.Enum):
    """What a reader does with a bad box."""

    ERROR = "error"  # refuse the file, naming the box
    DROP = "drop"  # skip the box and count it under its reason


@dataclass(frozen=True)
class Box:
    """One object: corners in absolute pixels (x right, y down, x1 and y1 the far edges) and its label."""

    x0: float
    y0: float
    x1: float
    y1: float
    label: int  # 0 .. len(classes) - 1


@dataclass(frozen=True)
class DetectionSample:
    """One image file, its size in pixels as the annotations give it, and its boxes."""

    image: Path
    width: int
    height: int
    boxes: tuple[Box, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "image", Path(self.image))
        object.__setattr__(self, "boxes", tuple(self.boxes))


class DetectionSet(Dataset):
    """Images as float C x S x S tensors in 0..1 (RGB, resized to the square working size S, not
    letterboxed) with their boxes scaled alike: `{"boxes": FloatTensor[N, 4] xyxy, "labels": LongTensor[N]}`."""

    def __init__(self, samples: list[DetectionSample], classes: list[str], image_size: int):
        if image_size < 1:
            raise ValueError(f"image_size must be positive, not {image_size}")
        self.samples = list(samples)
        self.classes = list(classes)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from PIL import Image

        sample, size = self.samples[index], self.image_size
        try:
            with Image.open(sample.image) as image:
                if image.size != (sample.width, sample.height):
                    raise BadInputError(f"image {sample.image} is {image.size[0]}x{image.size[1]} pixels; its "
                                        f"annotations say {sample.width}x{sample.height}")
                resized = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        except (OSError, ValueError, SyntaxError) as err:
            raise BadInputError(f"unreadable image {sample.image}: {_first_line(err)}") from None
        pixels = torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
        scale = torch.tensor([size / sample.width, size / sample.height] * 2, dtype=torch.float64)
        corners = torch.tensor([[b.x0, b.y0, b.x1, b.y1] for b in sample.boxes], dtype=torch.float64)
        boxes = (corners.reshape(-1, 4) * scale).float()
        labels = torch.tensor([b.label for b in sample.boxes], dtype=torch.int64)
        return pixels, {"boxes": boxes, "labels": labels}


# ---------------------------------------------------------------- checking boxes


def box_problem(box: Box, num_classes: int, width: int, height: int) -> str | None:
    """Why a box cannot be used (one of the reasons above), or None. A box within EDGE_TOLERANCE
    of the image is usable once clipped; one whose clipped area is empty lies outside."""
    if not all(math.isfinite(v) for v in (box.x0, box.y0, box.x1, box.y1)):
        return NON_FINITE
    if not 0 <= box.label < num_classes:
        return UNKNOWN_CLASS
    if box.x1 <= box.x0 or box.y1 <= box.y0:
        return NO_AREA
    tol = EDGE_TOLERANCE
    if box.x0 < -tol or box.y0 < -tol or box.x1 > width + tol or box.y1 > height + tol:
        return OUTSIDE
    if min(box.x1, width) <= max(box.x0, 0) or min(box.y1, height) <= max(box.y0, 0):
        return OUTSIDE
    return None


def _clipped(box: Box, width: int, height: int) -> Box:
    return Box(max(box.x0, 0.0), max(box.y0, 0.0), min(box.x1, float(width)), min(box.y1, float(height)), box.label)


def _detail(reason: str, num_classes: int, width: int, height: int) -> str:
    return {
        NON_FINITE: "has non-finite numbers",
        UNKNOWN_CLASS: f"has an unknown class id (the file names {num_classes} classes)",
        NO_AREA: "has zero or negative area",
        OUTSIDE: f"lies outside the {width}x{height} image (beyond the {EDGE_TOLERANCE:g}-pixel tolerance)",
    }[reason]


class _BoxPolicy:
    """Applies `bad_boxes` to each box a reader finds, and counts what it drops."""

    def __init__(self, bad_boxes: BadBoxes | str):
        self.mode = bad_boxes_policy(bad_boxes)
        self.dropped: dict[str, int] = {}

    def count(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def accept(self, box: Box, num_classes: int, width: int, height: int, where: str) -> Box | None:
        """The box clipped to the image, or None when it is dropped; raises under BadBoxes.ERROR."""
        reason = box_problem(box, num_classes, width, height)
        if reason is None:
            return _clipped(box, width, height)
        if self.mode is BadBoxes.ERROR:
            raise BadInputError(f"{where} {_detail(reason, num_classes, width, height)}: fix or remove it, "
                                "or read with bad_boxes='drop' to skip and count such boxes")
        self.count(reason)
        return None


def bad_boxes_policy(value: BadBoxes | str) -> BadBoxes:
    try:
        return BadBoxes(value)
    except ValueError:
        known = ", ".join(repr(m.value) for m in BadBoxes)
        raise BadInputError(f"bad_boxes must be one of {known}, not {value!r}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding it."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.size
    except FileNotFoundError:
        raise BadInputError(f"image not found: {path}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise BadInputError(f"unreadable image {path}: {_first_line(err)}") from None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------- COCO


def read_coco(images_dir: Path | str, annotations_json: Path | str, bad_boxes: BadBoxes | str = "error", *,
              image_size: int = DEFAULT_IMAGE_SIZE) -> tuple[DetectionSet, dict[str, int]]:
    """A COCO "instances" file (images, annotations with bbox [x, y, w, h] in pixels, categories),
    its `file_name`s relative to `images_dir`. Category ids become labels 0..K-1 in sorted-id order.
    Returns the set and, per reason, how many boxes were skipped (bad ones under "drop", crowd
    regions always)."""
    images_dir, json_path = Path(images_dir), Path(annotations_json)
    policy = _BoxPolicy(bad_boxes)
    if not images_dir.is_dir():
        raise BadInputError(f"images folder not found: {images_dir}")
    payload = _read_json(json_path)
    categories = {}
    for record in _records(payload, "categories", json_path):
        cid = _field(record, "id", int, json_path, "a category")
        name = _field(record, "name", str, json_path, f"category {cid}")
        if cid in categories:
            raise BadInputError(f"{json_path}: category id {cid} appears twice")
        categories[cid] = name
    if not categories:
        raise BadInputError(f"{json_path}: no categories")
    label_of = {cid: label for label, cid in enumerate(sorted(categories))}
    images: dict[int, tuple[Path, int, int]] = {}
    for record in _records(payload, "images", json_path):
        iid = _field(record, "id", int, json_path, "an image")
        if iid in images:
            raise BadInputError(f"{json_path}: image id {iid} appears twice")
        images[iid] = _coco_image(record, images_dir, json_path)
    boxes: dict[int, list[Box]] = {iid: [] for iid in images}
    for record in _records(payload, "annotations", json_path):
        iid = _field(record, "image_id", int, json_path, "an annotation")
        if iid not in images:
            raise BadInputError(f"{json_path}: annotation {record.get('id', '?')} refers to image id {iid}, "
                                "which the file does not list")
        if record.get("iscrowd", 0):
            policy.count(CROWD)
            continue
        bbox = record.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)):
            raise BadInputError(f"{json_path}: annotation {record.get('id', '?')} has bbox {bbox!r}; "
                                "expected [x, y, width, height] in pixels")
        cid = _field(record, "category_id", int, json_path, "an annotation")
        path, width, height = images[iid]
        x, y, w, h = (float(v) for v in bbox)
        where = (f"{json_path}: annotation {record.get('id', '?')} on {path.name} "
                 f"(category_id {cid}, bbox [x, y, w, h] = {bbox})")
        box = policy.accept(Box(x, y, x + w, y + h, label_of.get(cid, -1)), len(categories), width, height, where)
        if box is not None:
            boxes[iid].append(box)
    samples = [DetectionSample(path, width, height, boxes[iid]) for iid, (path, width, height) in images.items()]
    classes = [categories[cid] for cid in sorted(categories)]
    return DetectionSet(samples, classes, image_size), policy.dropped


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInputError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise BadInputError(f"cannot read {path}: {_first_line(err)}") from None


def _read_json(path: Path):
    text = _read_text(path, "annotation file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise BadInputError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None


def _records(payload, key: str, path: Path) -> list[dict]:
    if not isinstance(payload, dict):
        raise BadInputError(f"{path}: not a COCO instances file (expected an object with images, annotations, categories)")
    records = payload.get(key)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise BadInputError(f"{path}: '{key}' is missing or not a list of objects (a COCO instances file has "
                            "images, annotations and categories)")
    return records


def _field(record: dict, key: str, kind: type, path: Path, what: str):
    value = record.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadInputError(f"{path}: {what} has {key} = {value!r}; expected {'an integer' if kind is int else 'a string'}")
    return value


def _coco_image(record: dict, images_dir: Path, json_path: Path) -> tuple[Path, int, int]:
    name = _field(record, "file_name", str, json_path, "an image")
    path = images_dir / name
    try:
        path.resolve().relative_to(images_dir.resolve())
    except ValueError:
        raise BadInputError(f"{json_path}: image file_name {name!r} lies outside {images_dir}") from None
    width, height = (_field(record, key, int, json_path, f"image {name}") for key in ("width", "height"))
    actual = _image_size(path)
    if actual != (width, height):
        raise BadInputError(f"{json_path}: image {name} is {actual[0]}x{actual[1]} pixels, the file says {width}x{height}")
    return path, width, height


def write_coco(samples: list[DetectionSample], classes: list[str], images_dir: Path | str, json_path: Path | str) -> None:
    """Copy the images into `images_dir` (unless they are there already) and write a COCO instances
    file naming them relative to it; category ids are label + 1 (COCO counts from 1)."""
    images_dir, json_path = Path(images_dir), Path(json_path)
    images, annotations, names = [], [], set()
    with disk_errors(images_dir):
        images_dir.mkdir(parents=True, exist_ok=True)
        for image_id, sample in enumerate(samples, start=1):
            name = _place(sample.image, images_dir, names)
            images.append({"id": image_id, "file_name": name, "width": sample.width, "height": sample.height})
            for box in _checked(sample, classes):
                w, h = box.x1 - box.x0, box.y1 - box.y0
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": box.label + 1,
                                    "bbox": [box.x0, box.y0, w, h], "area": w * h, "iscrowd": 0})
    categories = [{"id": label + 1, "name": name} for label, name in enumerate(classes)]
    payload = {"images": images, "annotations": annotations, "categories": categories}
    with disk_errors(json_path):
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(payload, allow_nan=False) + "\n", encoding="utf-8")


def _place(image: Path, folder: Path, names: set[str]) -> str:
    """The image's name in `folder`, copying it there unless it is there already; a name taken twice
    is refused (the second image would overwrite the first)."""
    try:
        name = image.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        name = image.name
        if name not in names:
            shutil.copyfile(image, folder / name)
    if name in names:
        raise BadInputError(f"two images would both be written as {folder / name}: rename one")
    names.add(name)
    return name


def _checked(sample: DetectionSample, classes: list[str]) -> tuple[Box, ...]:
    """A writer's boxes: every one usable, or the sample is refused (a reader would refuse the file)."""
    for box in sample.boxes:
        reason = box_problem(box, len(classes), sample.width, sample.height)
        if reason is not None:
            raise BadInputError(f"{sample.image}: box {box} {_detail(reason, len(classes), sample.width, sample.height)}")
    return sample.boxes


# ---------------------------------------------------------------- YOLO


def read_yolo(root: Path | str, split: str, bad_boxes: BadBoxes | str = "error", *,
              image_size: int = DEFAULT_IMAGE_SIZE) -> tuple[DetectionSet, dict[str, int]]:
    """The YOLO txt layout: `root/data.yaml` (`names` as a list or an id -> name mapping; `train`,
    `val`, `test` folders relative to `path`, itself relative to root, or to root), images in
    `images/<split>/` and, per image, `labels/<split>/<stem>.txt` with lines `class cx cy w h`
    normalised to 0..1. An image without a label file has no objects. Class ids become labels
    0..K-1 in sorted-id order. Returns the set and the count of dropped boxes per reason."""
    root = Path(root)
    policy = _BoxPolicy(bad_boxes)
    yaml_path = root / "data.yaml"
    config = _read_data_yaml(yaml_path)
    classes, label_of = _yolo_names(config, yaml_path)
    images_dir = _yolo_split_dir(config, root, split, yaml_path)
    labels_dir = _labels_dir(images_dir)
    if not labels_dir.is_dir():
        raise BadInputError(f"labels folder not found: {labels_dir} (YOLO keeps labels/ beside images/)")
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in YOLO_SUFFIXES and p.is_file())
    if not images:
        raise BadInputError(f"{images_dir}: no images ({', '.join(sorted(YOLO_SUFFIXES))})")
    samples = []
    for image in images:
        width, height = _image_size(image)
        label_file = labels_dir / f"{image.stem}.txt"
        boxes = _yolo_boxes(label_file, label_of, len(classes), width, height, policy) if label_file.is_file() else []
        samples.append(DetectionSample(image, width, height, boxes))
    return DetectionSet(samples, classes, image_size), policy.dropped


def _read_data_yaml(path: Path) -> dict:
    try:
        import yaml  # PyYAML, an edgekd dependency; still, a broken environment is one line
    except ImportError:
        raise EnvironmentProblem(f"reading {path} needs PyYAML: pip install pyyaml") from None
    text = _read_text(path, "YOLO data.yaml")
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise BadInputError(f"{path}: not valid YAML ({getattr(err, 'problem', None) or _first_line(err)}{at})") from None
    if not isinstance(config, dict):
        raise BadInputError(f"{path}: expected a mapping with 'names' and split folders, found {type(config).__name__}")
    return config


def _yolo_names(config: dict, path: Path) -> tuple[list[str], dict[int, int]]:
    """Class names in label order, and each class id's label."""
    names = config.get("names")
    if isinstance(names, list):
        ids = dict(enumerate(names))
    elif isinstance(names, dict) and all(isinstance(k, int) and not isinstance(k, bool) for k in names):
        ids = names
    else:
        raise BadInputError(f"{path}: 'names' must be a list of class names or a mapping of class id to name, "
                            f"found {names!r}")
    if not ids:
        raise BadInputError(f"{path}: 'names' is empty")
    if "nc" in config and config["nc"] != len(ids):
        raise BadInputError(f"{path}: nc = {config['nc']!r} but 'names' lists {len(ids)} classes")
    order = sorted(ids)
    return [str(ids[i]) for i in order], {cid: label for label, cid in enumerate(order)}


def _yolo_split_dir(config: dict, root: Path, split: str, path: Path) -> Path:
    base = config.get("path", ".")
    if not isinstance(base, str):
        raise BadInputError(f"{path}: 'path' must be a folder, found {base!r}")
    value = config.get(split, f"images/{split}")
    if not isinstance(value, str) or value.endswith(".txt"):
        raise BadInputError(f"{path}: {split} = {value!r}; edgekd reads one image folder per split "
                            "(not a list of folders or a .txt list of images)")
    folder = root / base / value
    if not folder.is_dir():
        raise BadInputError(f"images folder not found: {folder} ({split} in {path})")
    return folder


def _labels_dir(images_dir: Path) -> Path:
    parts = list(images_dir.parts)
    if "images" not in parts:
        raise BadInputError(f"{images_dir}: a YOLO image folder has 'images' in its path (labels/ sits beside it)")
    index = len(parts) - 1 - parts[::-1].index("images")
    parts[index] = "labels"
    return Path(*parts)


def _yolo_boxes(label_file: Path, label_of: dict[int, int], num_classes: int, width: int, height: int,
                policy: _BoxPolicy) -> list[Box]:
    try:
        lines = label_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise BadInputError(f"cannot read {label_file}: {_first_line(err)}") from None
    boxes = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise BadInputError(f"{label_file} line {number}: {len(fields)} fields; expected 'class cx cy w h' "
                                "(5 numbers; polygon labels are not read)")
        try:
            cls, cx, cy, w, h = (float(v) for v in fields)
        except ValueError:
            raise BadInputError(f"{label_file} line {number}: {line.strip()!r} is not 5 numbers 'class cx cy w h'") from None
        label = label_of.get(int(cls), -1) if math.isfinite(cls) and cls == int(cls) else -1
        if not math.isfinite(cls):
            cx = math.nan  # a non-finite class id is a non-finite number, not an unknown id
        box = Box((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height, label)
        kept = policy.accept(box, num_classes, width, height, f"{label_file} line {number}: box {line.strip()!r}")
        if kept is not None:
            boxes.append(kept)
    return boxes


def write_yolo(samples: list[DetectionSample], classes: list[str], root: Path | str, split: str) -> None:
    """Copy the images into `root/images/<split>/`, write one `labels/<split>/<stem>.txt` per image
    (empty for an image without objects), and add the split to `root/data.yaml` (the classes of an
    existing data.yaml must match)."""
    root = Path(root)
    images_dir, labels_dir = root / "images" / split, root / "labels" / split
    names: set[str] = set()
    stems: set[str] = set()
    with disk_errors(root):
        images_dir.mkdir(parents=True, exist_ok=True)
        labels_dir.mkdir(parents=True, exist_ok=True)
        for sample in samples:
            name = _place(sample.image, images_dir, names)
            if "/" in name:
                raise BadInputError(f"{sample.image} lies in a sub-folder of {images_dir}; YOLO reads the images "
                                    "directly inside images/<split>/")
            stem = Path(name).stem
            if stem in stems:
                raise BadInputError(f"{sample.image}: another image in {images_dir} has the label file {stem}.txt")
            stems.add(stem)
            lines = [_yolo_line(box, sample.width, sample.height) for box in _checked(sample, classes)]
            (labels_dir / f"{stem}.txt").write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        _write_data_yaml(root / "data.yaml", classes, split)


def _yolo_line(box: Box, width: int, height: int) -> str:
    values = ((box.x0 + box.x1) / 2 / width, (box.y0 + box.y1) / 2 / height,
              (box.x1 - box.x0) / width, (box.y1 - box.y0) / height)
    return " ".join([str(box.label), *(f"{v:.10f}" for v in values)])  # 1e-10 of 16384 px: well under 1e-3 px


def _write_data_yaml(path: Path, classes: list[str], split: str) -> None:
    """data.yaml with the classes and every split folder present, written by hand so that the same
    input gives the same bytes; strings are JSON strings, which YAML reads as double-quoted scalars.
    An existing data.yaml keeps its other splits and its `path`; its classes must match."""
    base, folders = ".", {}
    if path.is_file():
        config = _read_data_yaml(path)
        if _yolo_names(config, path)[0] != list(classes):
            raise BadInputError(f"{path} names other classes than {classes}: write this split to another root")
        base = config.get("path", ".") if isinstance(config.get("path"), str) else "."
        folders = {s: config[s] for s in SPLITS if isinstance(config.get(s), str)}
    folders[split] = Path(os.path.relpath(path.parent / "images" / split, path.parent / base)).as_posix()
    lines = ["# YOLO data set written by edgekd.detection.data.write_yolo; folders are relative to this file"]
    lines += [f"path: {json.dumps(base)}"] if base != "." else []
    lines += [f"{s}: {json.dumps(folders[s])}" for s in SPLITS if s in folders]
    lines += [f"nc: {len(classes)}", "names:"] + [f"  - {json.dumps(name)}" for name in classes]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- the synthetic set

SYNTHETIC_CLASSES = ("animals", "food", "people", "tools", "transportation")  # openclipart folders, one class each
BACKGROUND_FOLDERS = ("buildings", "geography", "plants")  # scenery for the backgrounds, never an object
SPLIT_SHARES = (0.7, 0.15, 0.15)  # of the images, and of each folder's clip-art files, per split
OBJECTS_PER_IMAGE = (1, 5)
OBJECT_SCALE = (0.15, 0.6)  # the longer side of an object's tight box, as a fraction of the image side
OFF_IMAGE = 0.25  # an object may reach past an edge by up to this fraction of its width or height
MIN_VISIBLE = 0.4  # an object with less of its pixels in view (over 60% hidden) gets no label
MAX_SOURCE_PIXELS = 4_000_000  # larger clip art (a few 16000-pixel posters) is skipped: slow to decode
MIN_SOURCE_SIDE = 32  # pixels; smaller clip art would be upscaled into blur


@dataclass(frozen=True)
class SyntheticSet:
    """What make_synthetic wrote, and from which clip-art files."""

    root: Path
    classes: list[str]
    samples: dict[str, list[DetectionSample]]  # per split, the images as written under coco/<split>/
    sources: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # split -> objects/backgrounds -> files
    hidden: dict[str, int] = field(default_factory=dict)  # per split, objects pasted but given no box

    def coco(self, split: str) -> tuple[Path, Path]:
        """(images folder, instances json) of one split, as read_coco takes them."""
        return self.root / "coco" / split, self.root / "coco" / f"instances_{split}.json"

    @property
    def yolo(self) -> Path:
        return self.root / "yolo"


def make_synthetic(out_dir: Path | str, n_images: int, image_size: int = 160, seed: int = 0, *,
                   clipart_dir: Path = CLIPART_DIR, split_counts: tuple[int, int, int] | None = None) -> SyntheticSet:
    """A detection set made offline from real pictures, written as COCO and as YOLO from the same boxes.

    Objects are openclipart PNGs of five folders (animals, food, people, tools, transportation, one
    class each), cut out by their alpha channel; the tight box of alpha > 0 is the object's box.
    Each background is a random crop of a building, map or plant clip art (openclipart's
    buildings/, geography/ and plants/), composited over a two-colour gradient with coarse and fine
    noise, then tinted. Each image gets 1-5 objects whose longer side is 15-60% of the image side,
    pasted in turn, overlapping freely and reaching up to a quarter of their size past an edge;
    a box is the pasted object's alpha box within the image, and an object with under 40% of its
    pixels in view (hidden by later ones or cut by the edge) gets no box. Every clip-art file is
    given to exactly one split (70/15/15 per folder, seeded), so no object or background picture
    is seen in two splits. The same seed gives byte-identical files.

    `split_counts` (train, val, test) sets each split's image count instead (their sum is
    `n_images`): larger held-out splits make a verdict decidable without more training images.
    The clip-art files are still dealt 70/15/15, so held-out images recombine their own objects.

    Writes `coco/<split>/*.png` with `coco/instances_<split>.json`, `yolo/{images,labels}/<split>/`
    with `yolo/data.yaml`, and `sources.json` (the clip-art files each split used)."""
    out_dir, clipart_dir = Path(out_dir), Path(clipart_dir)
    if split_counts is not None and (len(split_counts) != len(SPLITS) or min(split_counts) < 1
                                     or sum(split_counts) != n_images):
        raise BadInputError(f"make_synthetic: split_counts {tuple(split_counts)} must be {len(SPLITS)} positive "
                            f"counts that add up to n_images ({n_images})")
    if n_images < len(SPLITS):
        raise BadInputError(f"make_synthetic needs at least {len(SPLITS)} images (one per split), not {n_images}")
    if image_size < 32 or seed < 0:
        raise BadInputError(f"make_synthetic needs image_size >= 32 and seed >= 0 (got {image_size}, {seed})")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise BadInputError(f"{out_dir} is not an empty folder: make_synthetic writes a new data set into a new folder")
    objects = [_split_files(clipart_dir, folder, seed) for folder in SYNTHETIC_CLASSES]
    scenery = [_split_files(clipart_dir, folder, seed) for folder in BACKGROUND_FOLDERS]
    art = _ClipArt(image_size)
    classes, samples, sources, hidden = list(SYNTHETIC_CLASSES), {}, {}, {}
    for split_index, (split, count) in enumerate(zip(SPLITS, split_counts or _split_counts(n_images))):
        pools = [files[split_index] for files in objects]
        backgrounds = [f for files in scenery for f in files[split_index]]
        used: dict[str, set[Path]] = {"objects": set(), "backgrounds": set()}
        images_dir, json_path = out_dir / "coco" / split, out_dir / "coco" / f"instances_{split}.json"
        with disk_errors(images_dir):
            images_dir.mkdir(parents=True, exist_ok=True)
        samples[split] = []
        for index in range(count):
            rng = np.random.default_rng([seed, split_index, index])
            pixels, boxes, unlabelled = _compose(rng, image_size, pools, backgrounds, art, used)
            hidden[split] = hidden.get(split, 0) + unlabelled
            path = images_dir / f"{split}_{index:05d}.png"
            with disk_errors(path):
                _save_png(pixels, path)
            samples[split].append(DetectionSample(path, image_size, image_size, boxes))
        write_coco(samples[split], classes, images_dir, json_path)
        write_yolo(samples[split], classes, out_dir / "yolo", split)
        sources[split] = {kind: sorted(str(p) for p in files) for kind, files in used.items()}
    with disk_errors(out_dir):
        (out_dir / "sources.json").write_text(json.dumps(sources, indent=1) + "\n", encoding="utf-8")
    return SyntheticSet(out_dir, classes, samples, sources, hidden)


def _split_counts(n: int) -> list[int]:
    val = max(1, round(n * SPLIT_SHARES[1]))
    test = max(1, round(n * SPLIT_SHARES[2]))
    return [n - val - test, val, test]


def _split_files(clipart_dir: Path, folder: str, seed: int) -> list[list[Path]]:
    """One folder's PNGs dealt to the splits at random (seeded by the seed and the folder), each file to one."""
    root = clipart_dir / folder
    files = sorted(root.rglob("*.png")) if root.is_dir() else []
    if len(files) < 2 * len(SPLITS):
        raise BadInputError(f"clip art not found in {root} (found {len(files)} PNG files): install it with "
                            "'sudo apt-get install -y openclipart-png'")
    rng = np.random.default_rng([seed, *folder.encode()])
    order = [files[i] for i in rng.permutation(len(files))]
    n_train, n_val = round(len(files) * SPLIT_SHARES[0]), round(len(files) * SPLIT_SHARES[1])
    return [order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]]


class _ClipArt:
    """Decodes each clip-art file once, at the size the images need. Objects are cut to their alpha
    box; files without transparency (or too large, or broken) are marked unusable."""

    def __init__(self, image_size: int):
        self.image_size = image_size
        self.objects: dict[Path, object] = {}
        self.scenes: dict[Path, object] = {}

    def draw(self, rng: np.random.Generator, pool: list[Path], kind: str):
        """A usable picture drawn at random from `pool`, and its file; unusable ones are drawn again."""
        cache, load = (self.objects, self._object) if kind == "objects" else (self.scenes, self._scene)
        for _ in range(100):
            path = pool[int(rng.integers(len(pool)))]
            if path not in cache:
                cache[path] = load(path)
            if cache[path] is not None:
                return cache[path], path
        raise BadInputError(f"no usable clip art among {len(pool)} files such as {pool[0]} (100 draws failed)")

    def _open(self, path: Path):
        from PIL import Image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    width, height = image.size
                    if width * height > MAX_SOURCE_PIXELS or min(width, height) < MIN_SOURCE_SIDE:
                        return None
                    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
                    return image.convert("RGBA"), has_alpha
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return None

    def _object(self, path: Path):
        opened = self._open(path)
        if opened is None or not opened[1]:
            return None
        image = opened[0]
        alpha = image.getchannel("A")
        if alpha.getextrema()[0] == 255 or alpha.getbbox() is None:  # opaque everywhere, or empty
            return None
        return _fit(image.crop(alpha.getbbox()), self.image_size)

    def _scene(self, path: Path):
        opened = self._open(path)
        return None if opened is None else _fit(opened[0], 2 * self.image_size)


def _fit(image, side: int):
    """The image scaled down (never up) so that its longer side is at most `side`."""
    from PIL import Image

    scale = side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    # reducing_gap: box-reduce first, then LANCZOS; a third of the time on a 1400-pixel file
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)


def _compose(rng: np.random.Generator, size: int, pools: list[list[Path]], backgrounds: list[Path],
             art: _ClipArt, used: dict[str, set[Path]]) -> tuple[np.ndarray, list[Box], int]:
    """One image (size x size x 3, uint8), the boxes of the objects that stay in view, and how many
    pasted objects got no box."""
    from PIL import Image

    canvas = _background(rng, size, backgrounds, art, used)
    owner = np.full((size, size), -1, dtype=np.int16)  # which object each pixel shows, -1 background
    placed = []  # (label, alpha pixels of the whole object, its box within the image)
    for index in range(int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))):
        label = int(rng.integers(len(pools)))
        source, path = art.draw(rng, pools[label], "objects")
        used["objects"].add(path)
        scale = size * rng.uniform(*OBJECT_SCALE) / max(source.size)
        width, height = (max(1, round(side * scale)) for side in source.size)
        image = source.resize((width, height), Image.Resampling.LANCZOS)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        rgba = np.asarray(image, dtype=np.float32)
        reach_x, reach_y = int(OFF_IMAGE * width), int(OFF_IMAGE * height)
        x = int(rng.integers(-reach_x, size - width + reach_x + 1))
        y = int(rng.integers(-reach_y, size - height + reach_y + 1))
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + width, size), min(y + height, size)
        part = rgba[y0 - y:y1 - y, x0 - x:x1 - x]
        alpha = part[..., 3:] / 255.0
        canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - alpha) + part[..., :3] * alpha
        mask = part[..., 3] > 0
        owner[y0:y1, x0:x1][mask] = index
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        box = (x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1) if rows.size else None
        placed.append((label, int((rgba[..., 3] > 0).sum()), box))
    kept = labelled_objects(owner, [total for _, total, _ in placed])
    boxes = [Box(float(b[0]), float(b[1]), float(b[2]), float(b[3]), label)
             for (label, _, b), keep in zip(placed, kept) if keep and b is not None]
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), boxes, len(placed) - len(boxes)


def labelled_objects(owner: np.ndarray, pixels: list[int]) -> list[bool]:
    """Which pasted objects get a box: `owner` holds, per image pixel, the index of the object on
    top (-1 for none), `pixels[i]` object i's pixel count (alpha > 0, in the image or past its edge).
    An object with under MIN_VISIBLE of them on top is labelled no more."""
    visible = np.bincount(owner[owner >= 0].ravel(), minlength=len(pixels))
    return [bool(seen >= MIN_VISIBLE * total) for seen, total in zip(visible, pixels)]


def _background(rng: np.random.Generator, size: int, backgrounds: list[Path], art: _ClipArt,
                used: dict[str, set[Path]]) -> np.ndarray:
    """A crop of a scenery clip art over a noisy two-colour gradient, tinted; float32, 0..255."""
    from PIL import Image

    ends = rng.uniform(30, 225, size=(2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    canvas = ends[0] + (ends[1] - ends[0]) * ramp[..., None]
    coarse = rng.normal(0, 20, size=(size // 16 + 2, size // 16 + 2, 3)).astype(np.float32)
    coarse_up = np.stack([np.asarray(Image.fromarray(coarse[..., c]).resize((size, size), Image.Resampling.BICUBIC))
                          for c in range(3)], axis=-1)
    canvas = canvas + coarse_up + rng.normal(0, 6, size=(size, size, 3)).astype(np.float32)
    scene, path = art.draw(rng, backgrounds, "scenes")
    used["backgrounds"].add(path)
    side = max(8, int(min(scene.size) * rng.uniform(0.5, 1.0)))
    left = int(rng.integers(0, scene.size[0] - side + 1))
    top = int(rng.integers(0, scene.size[1] - side + 1))
    crop = scene.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BILINEAR)
    rgba = np.asarray(crop, dtype=np.float32)
    alpha = rgba[..., 3:] / 255.0 * rng.uniform(0.6, 1.0)
    canvas = canvas * (1 - alpha) + rgba[..., :3] * alpha
    return canvas * rng.uniform(0.75, 1.0, size=3).astype(np.float32)


def _save_png(pixels: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(pixels).save(path, format="PNG")
