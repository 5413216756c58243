"""Where a detection run's images come from: a user's COCO or YOLO tree, or the offline default.

Two held-out roles, as in the classification chain:
- the *choice* split decides (QAT kept or not, a pruning step undone);
- the *reported* split is only measured, and the accuracy verdict reads it.

With train + val + test, val chooses and test is reported. With train + val only, a seeded share
of train (`[detect] choice_fraction`) chooses and the user's val is reported, so their val/ is what
the verdict reads and nothing was chosen on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgekd.config import fingerprint
from edgekd.detection.data import SPLITS, DetectionSet, make_synthetic, read_coco, read_yolo
from edgekd.errors import BadInputError


@dataclass(frozen=True)
class DetectionData:
    name: str  # "synthetic-clipart" or the folder
    format: str  # "synthetic", "coco" or "yolo"
    train: DetectionSet
    choice: DetectionSet  # every choice is made here
    reported: DetectionSet  # the verdict reads this; nothing is chosen on it
    splits: dict[str, str]  # role -> where its images came from
    dropped: dict[str, int] = field(default_factory=dict)  # bad boxes dropped, per reason (bad_boxes = "drop")

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    def key(self) -> str:
        """What a cached teacher depends on: the images and boxes of each role, not the folder's name."""
        return fingerprint(self.format, self.train.image_size, *(
            [(str(s.image), s.width, s.height, [(b.x0, b.y0, b.x1, b.y1, b.label) for b in s.boxes])
             for s in split.samples] for split in (self.train, self.choice, self.reported)))

    def as_dict(self) -> dict:
        return {"name": self.name, "format": self.format, "classes": self.classes, "image_size": self.train.image_size,
                "train": len(self.train), "choice": len(self.choice), "reported": len(self.reported),
                "boxes": {"train": _boxes(self.train), "choice": _boxes(self.choice), "reported": _boxes(self.reported)},
                "splits": self.splits, "dropped_boxes": self.dropped}


def _boxes(split: DetectionSet) -> int:
    return sum(len(s.boxes) for s in split.samples)


def load_detection_data(path: str | None, image_size: int, *, bad_boxes: str, synthetic_images: int,
                        choice_fraction: float, seed: int, cache_dir: Path,
                        synthetic_split: tuple[int, int, int] | None = None) -> DetectionData:
    """A COCO tree (`instances_<split>*.json` at the top or under `annotations/`, images in
    `<split>*/` or `images/<split>*/`), a YOLO tree (`data.yaml`), or with no path the synthetic
    clip-art set, made once per (size, count, seed) under `cache_dir`."""
    if path is None:
        return _synthetic(image_size, synthetic_images, seed, Path(cache_dir), synthetic_split)
    root = Path(path)
    if not root.is_dir():
        raise BadInputError(f"--data {root}: not a folder (a COCO tree with instances_*.json, or a YOLO tree "
                            "with data.yaml)")
    if (root / "data.yaml").is_file():
        splits = _yolo_splits(root, bad_boxes, image_size)
        fmt = "yolo"
    else:
        splits = _coco_splits(root, bad_boxes, image_size)
        fmt = "coco"
    return _roles(str(root), fmt, splits, choice_fraction, seed)


def _synthetic(image_size: int, images: int, seed: int, cache_dir: Path,
               split_counts: tuple[int, int, int] | None = None) -> DetectionData:
    from edgekd.runfolder import disk_errors

    counts = "" if split_counts is None else "-split" + "-".join(str(n) for n in split_counts)
    folder = cache_dir / f"detect-synthetic-{image_size}px-{images}{counts}-seed{seed}"
    if not (folder / "sources.json").is_file():  # written last: a folder without it is an interrupted build
        partial = folder.with_name(folder.name + ".partial")
        import shutil

        with disk_errors(cache_dir):
            shutil.rmtree(partial, ignore_errors=True)
            partial.parent.mkdir(parents=True, exist_ok=True)
            make_synthetic(partial, images, image_size=image_size, seed=seed, split_counts=split_counts)
            shutil.rmtree(folder, ignore_errors=True)
            partial.rename(folder)
    splits = {}
    for split in SPLITS:
        images_dir, json_path = folder / "coco" / split, folder / "coco" / f"instances_{split}.json"
        splits[split] = (read_coco(images_dir, json_path, image_size=image_size), str(json_path))
    data = _roles("synthetic-clipart", "synthetic", splits, 0.15, seed)
    return replace(data, name=f"synthetic-clipart ({images} images, {image_size} px, seed {seed})")


def _coco_splits(root: Path, bad_boxes: str, image_size: int) -> dict:
    found = {}
    for split in SPLITS:
        jsons = sorted([*root.glob(f"instances_{split}*.json"), *root.glob(f"annotations/instances_{split}*.json")])
        if not jsons:
            continue
        if len(jsons) > 1:
            raise BadInputError(f"{root}: more than one annotation file for {split}: "
                                f"{', '.join(p.name for p in jsons)}")
        folder_name = re.sub(r"^instances_", "", jsons[0].stem)  # instances_val2017.json -> val2017/
        candidates = [root / folder_name, root / "images" / folder_name]
        images_dir = next((c for c in candidates if c.is_dir()), None)
        if images_dir is None:
            raise BadInputError(f"{jsons[0]}: its images folder is missing (looked for "
                                f"{' and '.join(str(c) for c in candidates)})")
        found[split] = (read_coco(images_dir, jsons[0], bad_boxes, image_size=image_size), str(jsons[0]))
    if "train" not in found:
        raise BadInputError(f"--data {root}: no data.yaml (YOLO) and no instances_train*.json (COCO) at its top "
                            "or under annotations/")
    return found


def _yolo_splits(root: Path, bad_boxes: str, image_size: int) -> dict:
    from edgekd.detection.data import _read_data_yaml

    config = _read_data_yaml(root / "data.yaml")
    found = {}
    for split in SPLITS:
        if split == "train" or split in config or (root / "images" / split).is_dir():
            found[split] = (read_yolo(root, split, bad_boxes, image_size=image_size), f"{root / 'data.yaml'}: {split}")
    return found


def _roles(name: str, fmt: str, splits: dict, choice_fraction: float, seed: int) -> DetectionData:
    """train / choice / reported from the splits a tree has (see the module's docstring)."""
    (train, train_dropped), train_where = splits["train"]
    where, dropped = {"train": train_where}, dict(train_dropped)
    for split in ("val", "test"):
        for reason, n in splits.get(split, ((None, {}), ""))[0][1].items():
            dropped[reason] = dropped.get(reason, 0) + n
    if "val" in splits and "test" in splits:
        choice, reported = splits["val"][0][0], splits["test"][0][0]
        where.update(choice=splits["val"][1], reported=splits["test"][1])
    else:
        held = "val" if "val" in splits else "test" if "test" in splits else None
        if held is None:
            raise BadInputError(f"{name}: only a train split; add val (or val and test) images, so the student "
                                "can be judged on images it did not train on")
        reported = splits[held][0][0]
        train, choice = _carve(train, choice_fraction, seed)
        where.update(choice=f"{choice_fraction:.0%} of train, seeded ({len(choice)} images)", reported=splits[held][1])
    for role, split in (("train", train), ("choice", choice), ("reported", reported)):
        if split.classes != train.classes:
            raise BadInputError(f"{name}: the {role} split's classes {split.classes} differ from train's {train.classes}")
        if not split.samples:
            raise BadInputError(f"{name}: the {role} split has no images")
        if not any(s.boxes for s in split.samples):
            raise BadInputError(f"{name}: the {role} split has no boxes, so no mAP can be measured on it")
    return DetectionData(name, fmt, train, choice, reported, where, dropped)


def _carve(train: DetectionSet, fraction: float, seed: int) -> tuple[DetectionSet, DetectionSet]:
    order = np.random.default_rng([seed, 7]).permutation(len(train))
    n_choice = max(1, round(fraction * len(train)))
    if len(train) - n_choice < 1:
        raise BadInputError(f"{len(train)} training images are too few to hold {fraction:.0%} out for choices")
    pick = sorted(order[:n_choice].tolist())
    rest = sorted(order[n_choice:].tolist())
    return (DetectionSet([train.samples[i] for i in rest], train.classes, train.image_size),
            DetectionSet([train.samples[i] for i in pick], train.classes, train.image_size))
