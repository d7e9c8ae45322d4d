"""Image data sets as float32 tensors of shape (N, C, H, W) in [-1, 1], and a deterministic batch stream.

Sources understood by `load_images` (and `load_labels` where the source has labels):

- ``"digits"``: scikit-learn's 1797 handwritten digits, 8x8, one channel. Fixed split: the first 1500
  images are "train", the remaining 297 are "test" (the file order, no shuffling).
- ``"fashion-mnist"``: the idx files of the Debian package ``dataset-fashion-mnist`` (60k train, 10k test,
  28x28, one channel), read from /usr/share/datasets/fashion-mnist or from ``$GDDIM_FASHION_MNIST_DIR``.
- ``"cifar10:PATH"``, or a PATH to a ``cifar-10-batches-py`` folder: the pickled batches of the standard
  CIFAR-10 python release (data_batch_1..5 are "train", test_batch is "test"). They are pickles, read by
  an unpickler that knows only what the release holds (a dict of strings, lists and uint8 numpy arrays) and
  refuses everything else, so a crafted batch cannot run code.
- a folder of images (png, jpg, jpeg, bmp, webp; searched recursively, sorted by relative path): one
  channel if every image is grayscale, otherwise RGB. A single split, "train".
- an ``.npz`` file: the array under "images" (or its only array): (N, H, W) or (N, H, W, C) uint8 in
  [0, 255], or (N, H, W) / (N, C, H, W) float already in [-1, 1]. A single split, "train".
"""

from __future__ import annotations

import gzip
import os
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError, SettingsError

BUILT_IN_DATA = ("digits", "fashion-mnist")  # read from installed packages; every other source is a path
DIGITS_TRAIN_SIZE = 1500
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "GDDIM_FASHION_MNIST_DIR"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
# the only globals a CIFAR-10 python batch refers to (its numpy arrays), as numpy 1 and numpy 2 spell them
CIFAR_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                 ("numpy", "ndarray"), ("numpy", "dtype")}
SPLITS = ("train", "test")


def load_images(source: str, split: str = "train", image_size: int | None = None) -> torch.Tensor:
    """Images of `source` as float32 (N, C, H, W) in [-1, 1], resized to image_size x image_size if given."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    if source == "digits":
        images = _digits(split)[0]
    elif source == "fashion-mnist":
        images = _fashion_mnist(split)[0]
    else:
        path = _existing_path(source)
        if source.startswith("cifar10:") or _cifar_dir(path) is not None:
            images = _cifar10(path, split)[0]
        elif path.is_dir():
            _single_split(path, split)
            return _image_folder(path, image_size)
        elif path.suffix == ".npz":
            _single_split(path, split)
            images = _npz(path)
        else:
            raise DataError(
                f"don't know how to read {path}: expected a folder of images, a cifar-10-batches-py folder "
                "or an .npz file"
            )
    return images if image_size is None else resize(images, image_size)


def load_labels(source: str, split: str = "train") -> torch.Tensor:
    """Class labels (int64, shape (N,)) in the same order as `load_images(source, split)`."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    if source == "digits":
        return _digits(split)[1]
    if source == "fashion-mnist":
        return _fashion_mnist(split)[1]
    path = _existing_path(source)
    if source.startswith("cifar10:") or _cifar_dir(path) is not None:
        return _cifar10(path, split)[1]
    raise DataError(f"{source} has no labels: only digits, fashion-mnist and cifar10 sources carry them")


def resize(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Resize (N, C, H, W) to image_size x image_size: area averaging to shrink, antialiased bilinear otherwise."""
    h, w = images.shape[-2:]
    if (h, w) == (image_size, image_size):
        return images
    if image_size < h and image_size < w:
        out = F.interpolate(images, size=(image_size, image_size), mode="area")
    else:
        out = F.interpolate(
            images, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
        )
    return out.clamp_(-1.0, 1.0)  # round-off may step a hair outside [-1, 1]


def make_loader(
    images: torch.Tensor,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    flip: bool = False,
    start_step: int = 0,
) -> Iterator[torch.Tensor]:
    """Endless stream of batches (batch_size, C, H, W) for one rank, a pure function of (seed, step).

    Every epoch draws one permutation of all N images from (seed, epoch), drops its last N mod world_size
    entries and deals the rest round-robin, so the ranks' shards are disjoint and of equal size
    n = N // world_size. The shards of consecutive epochs are chained into one stream that is cut into
    batches; a batch may therefore straddle two epochs, and a data set smaller than a batch still works.
    Flips are drawn from (seed, step, rank). Batch k of a fresh loader equals batch 0 of a loader made with
    start_step=k, and skipping ahead costs one permutation, so resuming needs only (seed, step).
    All ranks must pass the same seed.
    """
    if not 0 <= rank < world_size:
        raise SettingsError(f"rank must be in [0, {world_size}), got {rank}")
    if batch_size < 1 or seed < 0 or start_step < 0:
        raise SettingsError("batch_size must be positive, seed and start_step non-negative")
    n = images.shape[0] // world_size
    if n == 0:
        raise SettingsError(f"{images.shape[0]} images cannot be shared among {world_size} ranks")

    def shard(epoch: int) -> torch.Tensor:
        perm = np.random.default_rng([seed, 0, epoch, 0]).permutation(images.shape[0])
        return torch.from_numpy(perm[: n * world_size][rank::world_size])

    def stream() -> Iterator[torch.Tensor]:
        step = start_step
        epoch, offset = divmod(start_step * batch_size, n)
        current = shard(epoch)
        while True:
            parts, need = [], batch_size
            while need > 0:
                take = current[offset : offset + need]
                parts.append(take)
                need -= len(take)
                offset += len(take)
                if offset == n:
                    epoch, offset = epoch + 1, 0
                    current = shard(epoch)
            batch = images[torch.cat(parts).to(images.device)]
            if flip:
                mask = np.random.default_rng([seed, 1, step, rank]).random(batch_size) < 0.5
                mask_t = torch.from_numpy(mask).to(images.device)
                batch[mask_t] = batch[mask_t].flip(-1)
            step += 1
            yield batch

    return stream()


def _to_unit_range(x: np.ndarray, top: float) -> torch.Tensor:
    """Integers in [0, top] -> float32 torch in [-1, 1]."""
    return torch.from_numpy(x.astype(np.float32) * np.float32(2.0 / top) - np.float32(1.0))


def _existing_path(source: str) -> Path:
    path = Path(source[len("cifar10:") :] if source.startswith("cifar10:") else source).expanduser()
    if not path.exists():
        raise DataError(
            f"data source {source!r}: the path {path} does not exist (known names: 'digits', 'fashion-mnist')"
        )
    return path


def _single_split(path: Path, split: str) -> None:
    if split != "train":
        raise DataError(f"{path} holds a single set of images; ask for split='train'")


def _digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # imported lazily: scikit-learn is slow to import

    bunch = load_digits()
    part = slice(0, DIGITS_TRAIN_SIZE) if split == "train" else slice(DIGITS_TRAIN_SIZE, None)
    images = _to_unit_range(bunch.images[part][:, None], 16.0)
    return images, torch.from_numpy(bunch.target[part].astype(np.int64))


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (the MNIST format): 0, 0, type code, rank, then big-endian int32 sizes, then uint8 data."""
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:  # a corrupt .gz raises BadGzipFile, an OSError
        raise DataError(f"{path} cannot be read ({type(err).__name__}: {err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an idx file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: header says {shape}, found {data.size} bytes of data")
    return data.reshape(shape)


def _fashion_mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    folder = Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)
    prefix = "train" if split == "train" else "t10k"
    arrays = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        candidates = [folder / f"{prefix}-{kind}.gz", folder / f"{prefix}-{kind}"]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise DataError(
                f"Fashion-MNIST file {candidates[0].name} not found in {folder}. Install the data set with "
                f"`apt-get install -y dataset-fashion-mnist`, or set {FASHION_MNIST_ENV} to a folder holding "
                "the idx files"
            )
        arrays.append(_read_idx(found))
    images, labels = arrays
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise DataError(f"Fashion-MNIST files in {folder} disagree: images {images.shape}, labels {labels.shape}")
    return _to_unit_range(images[:, None], 255.0), torch.from_numpy(labels.astype(np.int64))


def _cifar_dir(path: Path) -> Path | None:
    """The folder holding CIFAR-10 python batches: the path itself or its cifar-10-batches-py child."""
    for folder in (path, path / "cifar-10-batches-py"):
        if (folder / "data_batch_1").is_file() or (folder / "test_batch").is_file():
            return folder
    return None


def _cifar10(path: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    folder = _cifar_dir(path)
    if folder is None:
        raise DataError(f"{path} is not a cifar-10-batches-py folder (no data_batch_1 or test_batch inside)")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    data, labels = [], []
    for name in names:
        file = folder / name
        if not file.is_file():
            raise DataError(f"CIFAR-10 folder {folder} lacks {name}")
        batch_data, batch_labels = _cifar_batch(file)
        data.append(batch_data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels)
    return _to_unit_range(np.concatenate(data), 255.0), torch.from_numpy(np.concatenate(labels))


class _CifarUnpickler(pickle.Unpickler):
    """Resolves only CIFAR_GLOBALS: any other global (os.system, builtins.eval, ...) is refused, not looked up."""

    def find_class(self, module: str, name: str):
        if (module, name) not in CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which no CIFAR-10 batch contains")
        if name == "_reconstruct":
            return np.ndarray((0,), np.uint8).__reduce__()[0]  # numpy's own, whichever module holds it
        return np.ndarray if name == "ndarray" else np.dtype


def _cifar_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """(data uint8 (n, 3072), labels int64 (n,)) of one batch file, or a DataError naming the file."""
    refused = f"{file} is not a CIFAR-10 python batch, so gddim refuses to read it"
    try:
        with open(file, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise DataError(f"{refused}: {err}") from None
    except OSError as err:
        raise DataError(f"{file} cannot be read ({err.strerror or err})") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as err:
        raise DataError(f"{refused}: the file is corrupt or truncated ({type(err).__name__}: {err})") from None
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(b"labels") if isinstance(batch, dict) else None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        raise DataError(f"{refused}: it needs b'data', a uint8 array of shape (n, 3072)")
    if not (isinstance(labels, list) and len(labels) == len(data) and all(type(v) is int for v in labels)):
        raise DataError(f"{refused}: it needs b'labels', a list of {len(data)} integers")
    return data, np.asarray(labels, dtype=np.int64)


def _image_folder(path: Path, image_size: int | None) -> torch.Tensor:
    from PIL import Image

    files = sorted(
        (p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(path).as_posix(),
    )
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in folder {path}")
    arrays = []
    for p in files:
        try:
            with Image.open(p) as im:
                arrays.append(np.asarray(im.convert("L" if im.mode in ("1", "L", "LA") else "RGB")))
        except (OSError, ValueError, Image.DecompressionBombError) as err:  # UnidentifiedImageError is an OSError
            raise DataError(f"{p} is not a readable image ({err}); remove or replace it") from None
    if any(a.ndim == 3 for a in arrays):  # one colour image makes the whole set RGB
        arrays = [np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a for a in arrays]
    if image_size is None:
        sizes: dict[tuple[int, int], Path] = {}
        for a, p in zip(arrays, files):
            sizes.setdefault(a.shape[:2], p)
        if len(sizes) > 1:
            (s1, p1), (s2, p2) = list(sizes.items())[:2]
            raise DataError(
                f"images in {path} differ in size: {p1.name} is {s1[1]}x{s1[0]}, {p2.name} is {s2[1]}x{s2[0]} "
                "(width x height); pass image_size to resize them all to one square size"
            )
        return _hwc_to_unit(np.stack(arrays))
    return torch.cat([resize(_hwc_to_unit(a[None]), image_size) for a in arrays])


def _hwc_to_unit(x: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W) in [-1, 1]."""
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return _to_unit_range(np.ascontiguousarray(x), 255.0)


def _npz_images(path: Path) -> np.ndarray:
    """The images array of an .npz archive; never unpickles (arrays of Python objects are refused)."""
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not an .npz file (not a zip archive); write one with numpy.savez(PATH, images=x)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            if "images" not in keys and len(keys) != 1:
                raise DataError(f"{path} holds arrays {keys}; name the images array 'images'")
            x = archive["images" if "images" in keys else keys[0]]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        if "pickle" in str(err):  # numpy's advice (allow_pickle) would let the file run code: not given
            raise DataError(f"{path}: its array holds Python objects; store the images as a uint8 or float "
                            "array") from None
        raise DataError(f"{path} is a corrupt .npz file ({type(err).__name__}: {err})") from None
    if not isinstance(x, np.ndarray):  # numpy hands back the raw bytes of a member without an .npy header
        raise DataError(f"{path} is a corrupt .npz file (its member is not an .npy array)")
    return x


def _npz(path: Path) -> torch.Tensor:
    x = _npz_images(path)
    if x.dtype == np.uint8:
        if x.ndim not in (3, 4):
            raise DataError(f"{path}: uint8 images must be (N, H, W) or (N, H, W, C), got shape {x.shape}")
        images = _hwc_to_unit(x)
    elif np.issubdtype(x.dtype, np.floating):
        if x.ndim not in (3, 4):
            raise DataError(f"{path}: float images must be (N, H, W) or (N, C, H, W), got shape {x.shape}")
        lo, hi = float(x.min()), float(x.max())
        if not (np.isfinite(lo) and np.isfinite(hi) and -1.0 <= lo and hi <= 1.0):
            raise DataError(f"{path}: float images must already lie in [-1, 1], found values in [{lo}, {hi}]")
        images = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        images = images[:, None] if x.ndim == 3 else images
    else:
        raise DataError(f"{path}: images must be uint8 in [0, 255] or float in [-1, 1], got dtype {x.dtype}")
    if images.shape[1] not in (1, 3):
        raise DataError(
            f"{path}: found {images.shape[1]} channels, expected 1 or 3 (uint8 arrays are read as (N, H, W, C), "
            "float arrays as (N, C, H, W))"
        )
    return images
