"""Data sets: the default Fashion-MNIST from Debian's offline package, or a user's ImageFolder.

Nothing here downloads: the default data comes from `apt-get install dataset-fashion-mnist`,
user data from a local folder. Every problem with either is a one-line `BadInputError`.
"""

from __future__ import annotations

import gzip
import os
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from edgekd.config import DataConfig
from edgekd.errors import BadInputError

FASHION_MNIST_DIR = Path(os.environ.get("EDGEKD_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = [
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
]
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
MAX_IMAGE_SIDE = 16384  # pixels; a larger image (or one Pillow calls a decompression bomb) is refused
WIDE_GREY_MODES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0}
# the value that is white, per mode read as one grey channel: 16-bit grey (Pillow opens some 16-bit
# files as 32-bit "I") over 0..65535, float "F" images over 0..1. A pixel outside 0..white is refused:
# no scale is known for it, and clipping would silently change the image.
GREY_WHITE = {**WIDE_GREY_MODES, "F": 1.0}


HELD_OUT_FOLDERS = ("val", "valid", "validation", "test")  # beside train/: Kaggle and Roboflow say valid/


@dataclass(frozen=True)
class DataBundle:
    """What every stage needs to know about the data: splits, classes and input shape.

    `val` decides (best recovery step, accuracy budget); `test` is only ever reported."""

    name: str
    train: Dataset
    test: Dataset
    classes: list[str]
    input_shape: tuple[int, int, int]  # C, H, W
    val: Dataset | None = None
    splits: dict[str, str] = field(default_factory=dict)  # where each split came from, for the report
    default_augment: tuple[str, ...] = ("shift",)  # used when the profile sets no `data.augment`
    preprocess: dict = field(default_factory=dict)  # ImageFolder data: Preprocess.as_dict(), for the report

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ---------------------------------------------------------------- seeded, stratified subsets


def labels_of(dataset: Dataset) -> list[int]:
    """Every label of a split, in order, without decoding images where the split knows them."""
    if isinstance(dataset, Subset):
        parent = labels_of(dataset.dataset)
        return [parent[i] for i in dataset.indices]
    if isinstance(dataset, TensorDataset):
        return [int(y) for y in dataset.tensors[1].tolist()]
    if isinstance(dataset, _ImageFiles):
        return [label for _, label in dataset.samples]
    return [int(dataset[i][1]) for i in range(len(dataset))]


def _by_class(labels: list[int], seed: int) -> dict[int, list[int]]:
    """Indices of each class, each list in a seeded random order."""
    generator = torch.Generator().manual_seed(seed)
    groups: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        groups.setdefault(label, []).append(index)
    return {label: [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
            for label, members in sorted(groups.items())}


def _interleave(groups: list[list[int]], seed: int) -> list[int]:
    """One seeded random order of all the picked indices, so any batch of them mixes the classes."""
    picked = [i for group in groups for i in group]
    order = torch.randperm(len(picked), generator=torch.Generator().manual_seed(seed + 1)).tolist()
    return [picked[i] for i in order]


def stratified_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held out): `fraction` of every class held out, at least one image of each class
    that has two or more, seeded. A class-sorted folder gives the same class mix on both sides."""
    kept, held = [], []
    for members in _by_class(labels, seed).values():
        n_held = min(len(members) - 1, max(1, int(round(len(members) * fraction)))) if len(members) > 1 else 0
        held.append(members[:n_held])
        kept.append(members[n_held:])
    return _interleave(kept, seed), _interleave(held, seed)


def stratified_indices(labels: list[int], n: int, seed: int) -> list[int]:
    """`n` indices drawn at random (seeded) with every class in proportion to its share."""
    if n >= len(labels):
        return _interleave([list(range(len(labels)))], seed)
    groups = _by_class(labels, seed)
    quotas = {label: len(members) * n / len(labels) for label, members in groups.items()}
    take = {label: int(q) for label, q in quotas.items()}
    # largest remainders get the images left over, so the total is exactly n
    for label in sorted(quotas, key=lambda k: quotas[k] - take[k], reverse=True)[: n - sum(take.values())]:
        take[label] += 1
    return _interleave([groups[label][: take[label]] for label in groups], seed)


def stratified_subset(dataset: Dataset, n: int, seed: int) -> Dataset:
    """A seeded, class-stratified random subset: for calibration, importance batches and smoke
    slices. Never "the first N": an ImageFolder tree is sorted by class."""
    if n >= len(dataset):
        return dataset
    return Subset(dataset, stratified_indices(labels_of(dataset), n, seed))


def read_idx(path: Path) -> np.ndarray:
    """Read one idx file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as err:
        raise BadInputError(f"cannot read {path}: {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise BadInputError(f"{path}: not an unsigned-byte idx file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise BadInputError(f"{path}: truncated idx file ({len(raw) - offset} bytes for shape {dims})")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _fashion_split(root: Path, prefix: str) -> TensorDataset:
    images = read_idx(_idx_file(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_idx_file(root, f"{prefix}-labels-idx1-ubyte"))
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    x = ((x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD).unsqueeze(1)
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))


def _idx_file(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise BadInputError(
        f"Fashion-MNIST not found in {root} (missing {stem}.gz): install it with "
        "'sudo apt-get install -y dataset-fashion-mnist', or pass your own data with --data PATH"
    )


def load_fashion_mnist(root: Path = FASHION_MNIST_DIR) -> DataBundle:
    return DataBundle(
        name="fashion-mnist",
        train=_fashion_split(root, "train"),
        test=_fashion_split(root, "t10k"),
        classes=list(FASHION_MNIST_CLASSES),
        input_shape=(1, 28, 28),
        splits={"train": f"{root} train-*-idx*-ubyte", "test": f"{root} t10k-*-idx*-ubyte"},
        default_augment=("hflip",),
    )


DECODED_CACHE_BYTES = 1 << 30  # keep decoded images in memory while a split's cached pixels fit in this


@dataclass(frozen=True)
class Preprocess:
    """How a user's image becomes the network's input: resized (squashed to the square, or the
    shorter side to size / crop_fraction and the centre square), scaled to 0..1, then (x - mean) / std."""

    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    interpolation: str = "bilinear"
    resize: str = "squash"
    crop_fraction: float = 0.875
    source: str = "edgekd's default"

    def per_channel(self, channels: int) -> tuple[list[float], list[float]]:
        if len(self.mean) not in (1, channels) or len(self.std) not in (1, channels):
            raise BadInputError(f"data.mean / data.std give {len(self.mean)} / {len(self.std)} values; "
                                f"the images have {channels} channel(s)")
        return ([self.mean[0]] * channels if len(self.mean) == 1 else list(self.mean),
                [self.std[0]] * channels if len(self.std) == 1 else list(self.std))

    def as_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "interpolation": self.interpolation,
                "resize": self.resize, **({"crop_fraction": self.crop_fraction} if self.resize == "crop" else {}),
                "source": self.source}


def preprocessing(config: DataConfig, model_defaults: dict | None = None) -> Preprocess:
    """The profile's preprocessing; what it leaves unset comes from the teacher's library
    (`model_defaults`, e.g. timm's pretrained_cfg), else edgekd's default."""
    defaults = model_defaults or {}
    given = {k for k in ("mean", "std", "interpolation", "crop_fraction") if getattr(config, k) is not None}
    source = "the profile" if given else defaults.get("source", "edgekd's default")
    if given and defaults and given != {"mean", "std", "interpolation", "crop_fraction"}:
        source = f"the profile and {defaults['source']}"
    return Preprocess(
        mean=tuple(config.mean if config.mean is not None else defaults.get("mean", (0.5,))),
        std=tuple(config.std if config.std is not None else defaults.get("std", (0.5,))),
        interpolation=config.interpolation or defaults.get("interpolation", "bilinear"),
        resize=config.resize,
        crop_fraction=config.crop_fraction or defaults.get("crop_fraction", 0.875),
        source=source,
    )


class _ImageFiles(Dataset):
    """A list of (path, label) read with Pillow and resized to one square size. Each image is
    decoded once and its resized pixels kept (8-bit images as uint8, a quarter of the float they
    become) while the split's cache stays under DECODED_CACHE_BYTES: decoding a small PNG cost
    ~0.27 ms, as much as a student's training step spends on it, and a 224-px photo far more.
    Transparent pixels are composited onto white, as a viewer shows clip art and icons."""

    def __init__(self, samples: list[tuple[Path, int]], image_size: int, channels: int,
                 preprocess: Preprocess = Preprocess()):
        from torchvision.transforms import InterpolationMode, v2

        self.samples = samples
        self.channels = channels
        self.preprocess = preprocess
        self.decoded: dict[int, torch.Tensor] = {}
        self.cached_bytes = 0
        self.to_tensor = v2.PILToTensor()
        mode = InterpolationMode(preprocess.interpolation)
        if preprocess.resize == "crop":
            resize = [v2.Resize(int(image_size / preprocess.crop_fraction), interpolation=mode, antialias=True),
                      v2.CenterCrop(image_size)]
        else:
            resize = [v2.Resize((image_size, image_size), interpolation=mode, antialias=True)]
        self.resize = v2.Compose(resize)
        mean, std = preprocess.per_channel(channels)
        self.normalise = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        pixels = self.decoded.get(index)
        if pixels is None:
            pixels = self._read(path)
            size = pixels.numel() * pixels.element_size()
            if self.cached_bytes + size <= DECODED_CACHE_BYTES:
                self.decoded[index] = pixels
                self.cached_bytes += size
        return self.normalise(pixels), label

    def _read(self, path: Path) -> torch.Tensor:
        from PIL import Image

        try:
            with Image.open(path) as image:
                return self.resize(self._tensor(image))
        except (OSError, ValueError, SyntaxError) as err:  # Pillow's errors for a broken file
            raise BadInputError(f"unreadable image {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None

    def _tensor(self, image) -> torch.Tensor:
        """C x H x W. 8-bit images as uint8 (scaled to 0..1 later); 16-bit grey as float over its full
        range (65535 is white), where converting to 8-bit "L" would clip everything above 255."""
        if image.mode in GREY_WHITE:
            grey = torch.from_numpy(_grey_values(image, self.path_of(image)) / GREY_WHITE[image.mode])
            return grey.unsqueeze(0).expand(self.channels, -1, -1).contiguous()
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            from PIL import Image

            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        return self.to_tensor(image.convert("L" if self.channels == 1 else "RGB"))

    @staticmethod
    def path_of(image) -> str:
        return getattr(image, "filename", "") or "an image"


def _scan_classes(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes, samples, _ = _scan_with_skipped(root)
    return classes, samples


def _scan_with_skipped(root: Path) -> tuple[list[str], list[tuple[Path, int]], dict[str, list[Path]]]:
    """Classes, (image, label) samples, and per class the files skipped (not an image suffix)."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    samples, skipped = [], {}
    for label, name in enumerate(classes):
        skipped[name] = []
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                samples.append((path, label))
            elif path.is_file():
                skipped[name].append(path)
    return classes, samples, skipped


def _refuse_empty_classes(root: Path, classes: list[str], samples: list[tuple[Path, int]],
                          skipped: dict[str, list[Path]]) -> None:
    """A class folder with no image edgekd reads is refused, naming it: counted as a class, it would
    make the task look harder than it is, or (beside one real class) a one-class task scored 100%."""
    used = {label for _, label in samples}
    empty = [name for label, name in enumerate(classes) if label not in used]
    if not empty:
        return
    files = [p for name in empty for p in skipped[name]]
    seen = f"{len(files)} other file(s), e.g. {files[0].name}" if files else "no files"
    raise BadInputError(f"{root}: class folder(s) {', '.join(map(repr, empty))} hold no image edgekd reads "
                        f"({seen}; edgekd reads {', '.join(sorted(IMAGE_SUFFIXES))}; it skips every other "
                        "file, .gif and .svg included): add images or remove the folder")


def _grey_values(image, path) -> np.ndarray:
    """The pixels of a wide grey or float image as float32, if they lie in 0..white; else refused."""
    values = np.asarray(image, dtype=np.float64)
    white = GREY_WHITE[image.mode]
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if not np.isfinite(values).all() or low < 0 or high > white:
        span = "non-finite values" if not np.isfinite(values).all() else f"values {low:g}..{high:g}"
        raise BadInputError(f"image {path}: mode {image.mode} with {span}; edgekd reads mode {image.mode} "
                            f"over 0..{white:g} (save it as 8- or 16-bit grey, or scale it)")
    return values.astype(np.float32)


def _refuse_huge(image, path: Path, max_pixels: int | None) -> None:
    """Over MAX_IMAGE_SIDE a side, or over Pillow's decompression-bomb limit in pixels: refused."""
    width, height = image.size
    if max(width, height) > MAX_IMAGE_SIDE or (max_pixels is not None and width * height > max_pixels):
        raise BadInputError(f"image {path} is too large ({width}x{height} pixels; edgekd reads images up to "
                            f"{MAX_IMAGE_SIDE} pixels a side and {max_pixels or MAX_IMAGE_SIDE**2:,} pixels in all): "
                            "shrink it or remove it")


@contextmanager
def _headers_of_any_size():
    """Pillow refuses to open a very large image at all; edgekd opens the header and says how large."""
    import warnings

    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield limit
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _check_images(samples: list[tuple[Path, int]]) -> int:
    """Open every header once up front, so a bad file stops the run before training starts."""
    from PIL import Image, UnidentifiedImageError

    channels = 1
    for path, _ in samples:
        try:
            with _headers_of_any_size() as max_pixels, Image.open(path) as image:
                _refuse_huge(image, path, max_pixels)
                mode = image.mode
                image.verify()
                if mode not in ("L", "1", *GREY_WHITE):
                    channels = 3
            if mode in GREY_WHITE and mode not in ("I;16", "I;16L", "I;16B", "I;16N"):  # 16-bit fits by type
                with Image.open(path) as image:
                    _grey_values(image, path)
        except BadInputError:
            raise
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise BadInputError(f"unreadable image {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    return channels


def _held_out_folder(root: Path, names: tuple[str, ...]) -> Path | None:
    found = [root / n for n in names if (root / n).is_dir()]
    if len(found) > 1:
        raise BadInputError(f"{root}: several held-out folders ({', '.join(p.name for p in found)}); "
                            "keep one validation folder (val/, valid/ or validation/) and test/")
    return found[0] if found else None


def load_image_folder(root: Path, config: DataConfig, image_size: int, seed: int,
                      preprocess: Preprocess = Preprocess()) -> DataBundle:
    """An ImageFolder tree, in one of three layouts:

    - `train/`, `test/` and a validation folder (`val/`, `valid/` or `validation/`): used as named;
    - `train/` and one held-out folder (any of those names): that folder is the reported test
      split, and validation is carved from `train/`;
    - one tree of class folders (or `train/` alone): test and validation are both carved from it.
    Every carve is seeded and class-stratified."""
    if not root.is_dir():
        raise BadInputError(f"data folder not found: {root}")
    splits: dict[str, str] = {}
    val_samples = None
    train_root = root / "train"
    if train_root.is_dir():
        test_dir = root / "test" if (root / "test").is_dir() else None
        val_dir = _held_out_folder(root, ("val", "valid", "validation"))
        if test_dir is None and val_dir is not None:
            test_dir, val_dir = val_dir, None
    else:
        train_root, test_dir, val_dir = root, None, None
    classes, train_samples, skipped = _scan_with_skipped(train_root)
    if not train_samples:
        raise BadInputError(f"{train_root}: no images found (expected class sub-folders holding {sorted(IMAGE_SUFFIXES)})")
    if len(classes) < 2:
        raise BadInputError(f"{train_root}: found {len(classes)} class folder(s); a classifier needs at least 2")
    _refuse_empty_classes(train_root, classes, train_samples, skipped)
    splits["train"] = str(train_root)
    if test_dir is not None:
        test_samples = _scan_same_classes(test_dir, classes, train_root)
        splits["test"] = str(test_dir)
    else:
        kept, held = stratified_split([label for _, label in train_samples], config.test_fraction, seed)
        test_samples = [train_samples[i] for i in held]
        train_samples = [train_samples[i] for i in kept]
        splits["test"] = f"{100 * config.test_fraction:g}% of {train_root} (seeded, stratified)"
    if val_dir is not None:
        val_samples = _scan_same_classes(val_dir, classes, train_root)
        splits["val"] = str(val_dir)
    if not test_samples:
        raise BadInputError(f"{root}: no held-out images (add val/ or test/, or raise data.test_fraction)")
    channels = _check_images(train_samples + test_samples + (val_samples or []))
    preprocess.per_channel(channels)  # a mean for 3 channels on grey images: refused before any work

    def files(samples: list[tuple[Path, int]]) -> _ImageFiles:
        return _ImageFiles(samples, image_size, channels, preprocess)

    return DataBundle(
        name=f"imagefolder:{root}",
        train=files(train_samples),
        test=files(test_samples),
        classes=classes,
        input_shape=(channels, image_size, image_size),
        val=files(val_samples) if val_samples is not None else None,
        splits=splits,
        preprocess=preprocess.as_dict(),
    )


def _scan_same_classes(folder: Path, classes: list[str], train_root: Path) -> list[tuple[Path, int]]:
    found, samples = _scan_classes(folder)
    if found != classes:
        raise BadInputError(f"{folder}: classes {found} differ from {train_root.name}/ classes {classes}")
    return samples


def with_validation(bundle: DataBundle, fraction: float, seed: int) -> DataBundle:
    """Carve a seeded, class-stratified validation split out of `train` unless one was given."""
    if bundle.val is not None:
        return bundle
    kept, held = stratified_split(labels_of(bundle.train), fraction, seed)
    if not held:
        raise BadInputError(f"{bundle.name}: too few training images to hold out a validation split")
    splits = {**bundle.splits, "val": f"{100 * fraction:g}% of the training data (seeded, stratified)"}
    return replace(bundle, train=Subset(bundle.train, kept), val=Subset(bundle.train, held), splits=splits)


def augmentations(config: DataConfig, bundle: DataBundle) -> tuple[str, ...]:
    """The profile's augmentation list, or the data's safe default when the profile sets none."""
    return tuple(config.augment) if config.augment is not None else bundle.default_augment


def load_data(path: str | None, config: DataConfig, image_size: int = 32, seed: int = 0,
              model_defaults: dict | None = None) -> DataBundle:
    """The data, split and sliced as the profile says; `model_defaults` is the teacher's library's
    preprocessing, used where the profile sets none (`preprocessing`)."""
    bundle = load_fashion_mnist() if path is None else load_image_folder(
        Path(path), config, image_size, seed, preprocessing(config, model_defaults))
    bundle = with_validation(bundle, config.val_fraction, seed)
    return limit(bundle, config.train_limit, config.test_limit, config.val_limit, seed)


def limit(bundle: DataBundle, train_limit: int | None, test_limit: int | None, val_limit: int | None = None,
          seed: int = 0) -> DataBundle:
    """Seeded, class-stratified slices of each split: the smoke profile's slices of real data."""

    def part(dataset: Dataset | None, n: int | None) -> Dataset | None:
        return dataset if dataset is None or n is None else stratified_subset(dataset, n, seed)

    return replace(bundle, train=part(bundle.train, train_limit), test=part(bundle.test, test_limit),
                   val=part(bundle.val, val_limit))
