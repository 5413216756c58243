"""Detection data: the synthetic clip-art set, COCO and YOLO round trips, and the bad-box policy."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd.detection.data import (
    CLIPART_DIR,
    SYNTHETIC_CLASSES,
    labelled_objects,
    Box,
    DetectionSample,
    DetectionSet,
    make_synthetic,
    read_coco,
    read_yolo,
    write_coco,
    write_yolo,
)
from edgekd.errors import BadInputError


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("synthetic"), n_images=24, image_size=160, seed=0)


def _png(path: Path, width: int, height: int, color=(90, 90, 90), patch=None):
    """A plain image; `patch` = (x0, y0, x1, y1, colour) paints one rectangle."""
    from PIL import Image, ImageDraw

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (width, height), color)
    if patch is not None:
        ImageDraw.Draw(image).rectangle(patch[:4], fill=patch[4])
    image.save(path)
    return path


def _corners(sample: DetectionSample) -> list[tuple]:
    return [(b.x0, b.y0, b.x1, b.y1, b.label) for b in sample.boxes]


def _same_boxes(read: list[DetectionSample], written: list[DetectionSample]):
    assert [s.image.name for s in read] == [s.image.name for s in written]
    for got, want in zip(read, written):
        assert len(got.boxes) == len(want.boxes), got.image.name
        for a, b in zip(got.boxes, want.boxes):
            assert a.label == b.label
            assert max(abs(a.x0 - b.x0), abs(a.y0 - b.y0), abs(a.x1 - b.x1), abs(a.y1 - b.y1)) < 1e-3


# ---------------------------------------------------------------- the synthetic set


def test_synthetic_set_has_three_splits_of_boxed_images(synthetic):
    assert synthetic.classes == list(SYNTHETIC_CLASSES)
    assert {split: len(s) for split, s in synthetic.samples.items()} == {"train": 16, "val": 4, "test": 4}
    per_image = [len(s.boxes) for samples in synthetic.samples.values() for s in samples]
    assert all(1 <= n <= 5 for n in per_image) and sum(per_image) >= 30
    labels = {b.label for samples in synthetic.samples.values() for s in samples for b in s.boxes}
    assert labels == set(range(len(SYNTHETIC_CLASSES)))


def test_synthetic_boxes_lie_inside_the_image_with_positive_area(synthetic):
    for samples in synthetic.samples.values():
        for sample in samples:
            assert (sample.width, sample.height) == (160, 160)
            for box in sample.boxes:
                assert 0 <= box.x0 < box.x1 <= 160 and 0 <= box.y0 < box.y1 <= 160
                assert (box.x1 - box.x0) * (box.y1 - box.y0) < 160 * 160  # an object, not the whole image
                assert max(box.x1 - box.x0, box.y1 - box.y0) >= 0.15 * 160 * 0.5  # cut by an edge at most


def test_an_object_mostly_hidden_by_later_ones_gets_no_box():
    owner = np.full((10, 10), -1)
    owner[0:5, 0:10] = 0  # object 0: 100 pixels pasted, 50 still on top
    owner[5:7, 0:10] = 1  # object 1: 100 pixels pasted, 20 on top (80% hidden)
    owner[7:10, 0:10] = 2  # object 2: 30 pixels, all on top
    assert labelled_objects(owner, [100, 100, 30]) == [True, False, True]
    assert labelled_objects(owner, [100, 50, 30]) == [True, True, True]  # 40% in view is enough


def test_synthetic_images_leave_hidden_objects_unlabelled(synthetic):
    assert synthetic.hidden.keys() == {"train", "val", "test"}
    assert sum(synthetic.hidden.values()) >= 1  # 24 images of 1-5 overlapping objects: some get buried


def test_both_formats_read_back_the_boxes_written(synthetic):
    for split, written in synthetic.samples.items():
        coco, dropped = read_coco(*synthetic.coco(split))
        assert dropped == {} and coco.classes == synthetic.classes
        _same_boxes(coco.samples, written)
        yolo, dropped = read_yolo(synthetic.yolo, split)
        assert dropped == {} and yolo.classes == synthetic.classes
        _same_boxes(yolo.samples, written)


def test_no_clip_art_file_is_shared_between_splits(synthetic):
    sources = json.loads((synthetic.root / "sources.json").read_text())
    assert sources == synthetic.sources
    for kind in ("objects", "backgrounds"):
        used = {split: set(sources[split][kind]) for split in ("train", "val", "test")}
        assert all(used.values())
        assert not used["train"] & used["val"] and not used["train"] & used["test"] and not used["val"] & used["test"]
    folders = {Path(p).relative_to(CLIPART_DIR).parts[0] for s in sources.values() for p in s["objects"]}
    assert folders == set(SYNTHETIC_CLASSES)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    make_synthetic(tmp_path / "a", n_images=6, seed=3)
    make_synthetic(tmp_path / "b", n_images=6, seed=3)
    make_synthetic(tmp_path / "c", n_images=6, seed=4)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) == 2 * 6 + 6 + 3 + 1 + 1  # images twice, labels, 3 json, data.yaml, sources.json
    assert a == b
    assert a.keys() == c.keys()
    assert a["coco/train/train_00000.png"] != c["coco/train/train_00000.png"]
    assert a["coco/instances_train.json"] != c["coco/instances_train.json"]


def test_split_counts_set_each_splits_size_and_keep_the_clip_art_apart(tmp_path):
    made = make_synthetic(tmp_path / "s", n_images=9, image_size=64, seed=2, split_counts=(2, 3, 4))
    assert [len(made.samples[split]) for split in ("train", "val", "test")] == [2, 3, 4]
    objects = {split: set(made.sources[split]["objects"]) for split in ("train", "val", "test")}
    assert not (objects["train"] & objects["test"]) and not (objects["val"] & objects["test"])
    with pytest.raises(BadInputError, match="add up to n_images"):
        make_synthetic(tmp_path / "t", n_images=9, split_counts=(2, 3, 5))


def test_a_profile_gives_split_sizes_or_a_total_not_two_that_disagree():
    from pydantic import ValidationError

    from edgekd.config import DetectConfig

    assert DetectConfig(synthetic_split=(70, 30, 90)).images_made == 190
    with pytest.raises(ValidationError, match="not the sum of synthetic_split"):
        DetectConfig(synthetic_images=100, synthetic_split=(70, 30, 90))


def test_synthetic_refuses_a_folder_in_use(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(BadInputError, match="not an empty folder"):
        make_synthetic(tmp_path, n_images=3)


# ---------------------------------------------------------------- writers, readers and DetectionSet


def test_fractional_boxes_survive_a_round_trip_through_both_formats(tmp_path):
    image = _png(tmp_path / "src" / "street.png", 641, 479)
    boxes = [Box(0.0, 0.0, 641.0, 479.0, 1), Box(10.25, 20.125, 33.3333, 47.9, 0), Box(600.5, 1.75, 640.99, 3.01, 1)]
    sample = DetectionSample(image, 641, 479, boxes)
    write_coco([sample], ["car", "bike"], tmp_path / "coco", tmp_path / "coco.json")
    write_yolo([sample], ["car", "bike"], tmp_path / "yolo", "val")
    coco, _ = read_coco(tmp_path / "coco", tmp_path / "coco.json")
    yolo, _ = read_yolo(tmp_path / "yolo", "val")
    for read in (coco, yolo):
        assert read.classes == ["car", "bike"]
        _same_boxes(read.samples, [sample])


def test_detection_set_resizes_the_image_and_scales_its_boxes(tmp_path):
    image = _png(tmp_path / "a.png", 40, 30, patch=(20, 6, 29, 17, (255, 0, 0)))  # Pillow fills x1, y1 too
    data = DetectionSet([DetectionSample(image, 40, 30, [Box(20, 6, 30, 18, 2)])], ["a", "b", "c"], image_size=20)
    pixels, target = data[0]
    assert pixels.shape == (3, 20, 20) and pixels.dtype == torch.float32
    assert 0.0 <= float(pixels.min()) and float(pixels.max()) <= 1.0
    assert torch.allclose(target["boxes"], torch.tensor([[10.0, 4.0, 15.0, 12.0]]))
    assert target["labels"].tolist() == [2] and target["labels"].dtype == torch.int64
    red = pixels[:, 8, 12]  # the middle of the scaled box
    assert red[0] > 0.9 and red[1] < 0.1 and red[2] < 0.1
    assert pixels[0, 2, 2] < 0.5  # outside it: the grey background


def test_a_yolo_image_without_a_label_file_has_no_objects(tmp_path):
    root = tmp_path / "yolo"
    _png(root / "images" / "train" / "empty.jpg", 32, 32)
    _png(root / "images" / "train" / "one.png", 32, 32)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "one.txt").write_text("1 0.5 0.5 0.25 0.5\n")
    (root / "data.yaml").write_text("train: images/train\nnames: [cat, dog]\n")
    data, dropped = read_yolo(root, "train")
    assert [s.image.name for s in data.samples] == ["empty.jpg", "one.png"]
    assert data.samples[0].boxes == () and _corners(data.samples[1]) == [(12.0, 8.0, 20.0, 24.0, 1)]
    assert data[0][1]["boxes"].shape == (0, 4) and data[0][1]["labels"].shape == (0,)
    assert dropped == {}


def test_yolo_names_as_a_mapping_and_folders_under_path(tmp_path):
    root = tmp_path / "yolo"
    _png(root / "data" / "images" / "v" / "x.png", 50, 20)
    (root / "data" / "labels" / "v").mkdir(parents=True)
    (root / "data" / "labels" / "v" / "x.txt").write_text("7 0.5 0.5 0.2 0.5\n2 0.1 0.5 0.2 1.0\n")
    (root / "data.yaml").write_text("path: data\nval: images/v\nnames:\n  2: cat\n  7: dog\n")
    data, _ = read_yolo(root, "val")
    assert data.classes == ["cat", "dog"]  # ids 2 and 7 become labels 0 and 1
    assert _corners(data.samples[0]) == [(20.0, 5.0, 30.0, 15.0, 1), (0.0, 0.0, 10.0, 20.0, 0)]


# ---------------------------------------------------------------- bad boxes

COCO_BAD = {  # annotation on a 40 x 30 image -> the reason a reader gives
    "outside the image": ({"bbox": [30, 20, 20, 20], "category_id": 1}, "lies outside the 40x30 image"),
    "zero or negative area": ({"bbox": [5, 5, 0, 10], "category_id": 1}, "has zero or negative area"),
    "unknown class id": ({"bbox": [5, 5, 10, 10], "category_id": 99}, "has an unknown class id"),
    "non-finite numbers": ({"bbox": [math.nan, 5, 10, 10], "category_id": 1}, "has non-finite numbers"),
}
GOOD = {"bbox": [2, 3, 10, 12], "category_id": 1}
AT_THE_EDGE = {"bbox": [-0.5, 0, 10, 30.75], "category_id": 2}  # within the 1-pixel tolerance: clipped


def _coco(tmp_path: Path, annotations: list[dict]) -> tuple[Path, Path]:
    _png(tmp_path / "images" / "a.png", 40, 30)
    payload = {"images": [{"id": 7, "file_name": "a.png", "width": 40, "height": 30}],
               "annotations": [{"id": i + 1, "image_id": 7, **a} for i, a in enumerate(annotations)],
               "categories": [{"id": 2, "name": "dog"}, {"id": 1, "name": "cat"}]}
    (tmp_path / "instances.json").write_text(json.dumps(payload))  # json writes NaN as NaN, as Python reads it
    return tmp_path / "images", tmp_path / "instances.json"


@pytest.mark.parametrize("reason", sorted(COCO_BAD))
def test_a_bad_coco_box_is_refused_in_one_line(tmp_path, reason):
    annotation, says = COCO_BAD[reason]
    with pytest.raises(BadInputError) as err:
        read_coco(*_coco(tmp_path, [GOOD, annotation]), bad_boxes="error")
    message = str(err.value)
    assert "\n" not in message
    assert "instances.json: annotation 2 on a.png" in message and says in message
    assert f"bbox [x, y, w, h] = {annotation['bbox']}" in message and "bad_boxes='drop'" in message


def test_bad_coco_boxes_are_dropped_and_counted(tmp_path):
    annotations = [GOOD, *(a for a, _ in COCO_BAD.values()), AT_THE_EDGE, {**GOOD, "iscrowd": 1}]
    data, dropped = read_coco(*_coco(tmp_path, annotations), bad_boxes="drop")
    assert dropped == {reason: 1 for reason in COCO_BAD} | {"crowd region (iscrowd=1)": 1}
    assert data.classes == ["cat", "dog"]  # sorted by category id
    assert _corners(data.samples[0]) == [(2.0, 3.0, 12.0, 15.0, 0), (0.0, 0.0, 9.5, 30.0, 1)]


YOLO_BAD = {  # label line on a 40 x 30 image -> the reason a reader gives
    "outside the image": ("0 1.2 0.5 0.2 0.2", "lies outside the 40x30 image"),
    "zero or negative area": ("1 0.5 0.5 0 0.2", "has zero or negative area"),
    "unknown class id": ("7 0.5 0.5 0.2 0.2", "has an unknown class id"),
    "non-finite numbers": ("0 nan 0.5 0.2 0.2", "has non-finite numbers"),
}


def _yolo(tmp_path: Path, lines: list[str]) -> Path:
    root = tmp_path / "yolo"
    _png(root / "images" / "val" / "a.png", 40, 30)
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "val" / "a.txt").write_text("\n".join(lines) + "\n")
    (root / "data.yaml").write_text("val: images/val\nnames: {0: cat, 1: dog}\n")
    return root


@pytest.mark.parametrize("reason", sorted(YOLO_BAD))
def test_a_bad_yolo_box_is_refused_in_one_line(tmp_path, reason):
    line, says = YOLO_BAD[reason]
    with pytest.raises(BadInputError) as err:
        read_yolo(_yolo(tmp_path, ["0 0.5 0.5 0.5 0.5", line]), "val")
    message = str(err.value)
    assert "\n" not in message
    assert f"a.txt line 2: box '{line}' {says}" in message


def test_bad_yolo_boxes_are_dropped_and_counted(tmp_path):
    lines = ["0 0.5 0.5 0.5 0.5", *(line for line, _ in YOLO_BAD.values()), "1 0.1 0.5 0.22 1.0"]
    data, dropped = read_yolo(_yolo(tmp_path, lines), "val", bad_boxes="drop")
    assert dropped == {reason: 1 for reason in YOLO_BAD}
    got = _corners(data.samples[0])
    assert got[0] == (10.0, 7.5, 30.0, 22.5, 0)
    assert got[1][:2] == (0.0, 0.0) and got[1][4] == 1 and abs(got[1][2] - 8.4) < 1e-9  # x0 = -0.4 px: clipped


# ---------------------------------------------------------------- broken inputs, one line each


def _one_line(call, match: str):
    with pytest.raises(BadInputError, match=match) as err:
        call()
    assert "\n" not in str(err.value)


def test_broken_inputs_are_one_line_errors(tmp_path):
    images, json_path = _coco(tmp_path, [GOOD])
    _one_line(lambda: read_coco(tmp_path / "nowhere", json_path), "images folder not found: .*nowhere")
    json_path.write_text('{"images": [')
    _one_line(lambda: read_coco(images, json_path), r"instances.json: not valid JSON \(Expecting value at line 1, column \d+\)")
    _one_line(lambda: read_coco(images, tmp_path / "missing.json"), "annotation file not found")
    _one_line(lambda: read_yolo(tmp_path / "no-yolo", "train"), "YOLO data.yaml not found: .*no-yolo/data.yaml")
    root = _yolo(tmp_path, ["0 0.5 0.5 0.5 0.5"])
    _one_line(lambda: read_yolo(root, "train"), "images folder not found: .*images/train")
    _one_line(lambda: read_yolo(root, "val", bad_boxes="ignore"), "bad_boxes must be one of 'error', 'drop'")
    (root / "data.yaml").write_text("names: [cat\n")
    _one_line(lambda: read_yolo(root, "val"), "data.yaml: not valid YAML")
