import itertools
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gddim.data import DataError, FASHION_MNIST_DIR, load_images, load_labels, make_loader, resize


def test_digits_shape_range_and_fixed_split():
    train, test = load_images("digits"), load_images("digits", "test")
    assert train.shape == (1500, 1, 8, 8) and test.shape == (297, 1, 8, 8)
    assert train.dtype == torch.float32
    assert train.min() == -1.0 and train.max() == 1.0
    # values 0..16 map to multiples of 1/8 in [-1, 1]
    assert torch.equal(train * 8, (train * 8).round())
    labels = load_labels("digits", "test")
    assert labels.dtype == torch.int64 and labels.shape == (297,)
    assert set(labels.tolist()) == set(range(10))
    assert torch.equal(load_images("digits"), train)


def _py2_cifar_batch(data: np.ndarray, labels: list[int], name: str) -> bytes:
    """A batch as Python 2's cPickle wrote the CIFAR-10 release: protocol 2, strings as BINSTRING, numpy 1 names."""

    def text(b: bytes) -> bytes:
        return b"T" + struct.pack("<I", len(b)) + b

    def integer(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    dtype = b"cnumpy\ndtype\n" + text(b"u1") + integer(0) + integer(1) + b"\x87R(" + integer(3) + text(b"|") \
        + b"NNN" + integer(-1) + integer(-1) + integer(0) + b"tb"
    array = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + integer(0) + b"\x85" + text(b"b") \
        + b"\x87R(" + integer(1) + integer(data.shape[0]) + integer(data.shape[1]) + b"\x86" + dtype + b"\x89" \
        + text(data.tobytes()) + b"tb"
    label_list = b"](" + b"".join(integer(v) for v in labels) + b"e"
    return b"\x80\x02}(" + text(b"data") + array + text(b"labels") + label_list + text(b"batch_label") \
        + text(name.encode()) + b"u."


def _write_cifar(folder: Path, per_batch: int) -> dict[str, tuple[np.ndarray, list[int]]]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        (folder / name).write_bytes(_py2_cifar_batch(data, labels, name))
        written[name] = (data, labels)
    return written


def test_cifar10_folder_shapes_pixels_and_labels(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    written = _write_cifar(folder, per_batch=3)
    train = load_images(str(folder))
    assert train.shape == (15, 3, 32, 32)
    data, labels = written["data_batch_2"]
    # image 0 of batch 2, channel 1 (green), row 5, column 7: byte 1024 + 5 * 32 + 7 of its row
    assert train[3, 1, 5, 7].item() == pytest.approx(data[0, 1024 + 5 * 32 + 7] / 127.5 - 1.0, abs=1e-6)
    test = load_images(f"cifar10:{tmp_path}", "test")
    assert test.shape == (3, 3, 32, 32)
    expected = torch.from_numpy(written["test_batch"][0].reshape(3, 3, 32, 32).astype(np.float32)) / 127.5 - 1
    assert torch.allclose(test, expected, atol=1e-6)
    assert load_labels(str(folder), "test").tolist() == written["test_batch"][1]
    assert load_images(str(folder), image_size=16).shape == (15, 3, 16, 16)


def test_cifar10_batch_pickled_by_python3_and_numpy2_also_loads(tmp_path):
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    folder = tmp_path / "batches"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": [3, 4]}, protocol=4))
    assert load_labels(str(folder), "test").tolist() == [3, 4]
    assert torch.allclose(load_images(str(folder), "test").flatten(1), torch.from_numpy(data / 127.5 - 1).float(),
                          atol=1e-6)  # float32 arithmetic of the two roads to [-1, 1]


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("payload", ["reduce", "labels", "not-a-dict", "truncated"])
def test_cifar10_batch_that_would_run_code_or_is_not_a_batch_is_refused(tmp_path, payload):
    folder, marker = tmp_path / "cifar-10-batches-py", tmp_path / "marker"
    folder.mkdir()
    good = _py2_cifar_batch(np.zeros((1, 3072), np.uint8), [0], "x")
    content = {"reduce": pickle.dumps({b"data": _RunsCode(marker), b"labels": [0]}, protocol=4),
               "labels": pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [_RunsCode(marker)]}),
               "not-a-dict": pickle.dumps([1, 2]), "truncated": good[: len(good) // 2]}[payload]
    (folder / "data_batch_1").write_bytes(content)
    with pytest.raises(DataError) as info:
        load_images(str(folder))
    message = str(info.value)
    assert str(folder / "data_batch_1") in message and "not a CIFAR-10 python batch" in message
    if payload in ("reduce", "labels"):
        assert f"{os.system.__module__}.system" in message  # the refused global is named
    assert not marker.exists()


def test_cifar10_prefix_on_a_folder_without_batches(tmp_path):
    with pytest.raises(DataError, match="not a cifar-10-batches-py folder"):
        load_images(f"cifar10:{tmp_path}")


def _png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


def test_image_folder_gray_and_rgb(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    _png(tmp_path / "b.png", gray)
    _png(tmp_path / "a.png", np.full((3, 4), 255, dtype=np.uint8))
    images = load_images(str(tmp_path))
    assert images.shape == (2, 1, 3, 4)
    assert torch.all(images[0] == 1.0)  # sorted by name: a.png first
    assert torch.allclose(images[1, 0], torch.from_numpy(gray / 127.5 - 1).float(), atol=1e-6)

    rgb = np.zeros((3, 4, 3), dtype=np.uint8)
    rgb[..., 2] = 255
    (tmp_path / "sub").mkdir()
    _png(tmp_path / "sub" / "c.png", rgb)
    images = load_images(str(tmp_path))
    assert images.shape == (3, 3, 3, 4)
    assert torch.all(images[0] == 1.0)  # the gray image is repeated over the three channels
    assert images[2, :, 0, 0].tolist() == [-1.0, -1.0, 1.0]


def test_empty_folder_names_the_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=f"no images .* in folder {tmp_path}"):
        load_images(str(tmp_path))


@pytest.mark.parametrize("content", [b"not a png at all", "truncated"])
def test_corrupt_image_is_named(tmp_path, content):
    _png(tmp_path / "a.png", np.zeros((8, 8), dtype=np.uint8))
    _png(tmp_path / "b.png", np.full((8, 8), 7, dtype=np.uint8))
    whole = (tmp_path / "b.png").read_bytes()
    (tmp_path / "b.png").write_bytes(whole[: len(whole) // 2] if content == "truncated" else content)
    with pytest.raises(DataError, match=rf"{tmp_path / 'b.png'} is not a readable image .*remove or replace it"):
        load_images(str(tmp_path))


def test_mixed_sizes_need_image_size_and_resize_fixes_them(tmp_path):
    _png(tmp_path / "a.png", np.zeros((8, 8), dtype=np.uint8))
    _png(tmp_path / "b.png", np.full((4, 6), 255, dtype=np.uint8))
    with pytest.raises(DataError, match=r"a\.png is 8x8, b\.png is 6x4 .*pass image_size"):
        load_images(str(tmp_path))
    images = load_images(str(tmp_path), image_size=4)
    assert images.shape == (2, 1, 4, 4)
    assert torch.all(images[0] == -1.0) and torch.all(images[1] == 1.0)


def test_resize_area_down_and_bilinear_up():
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4) / 15 * 2 - 1
    down = resize(x, 2)
    # area averaging of each 2x2 block
    assert down[0, 0, 0, 0].item() == pytest.approx(x[0, 0, :2, :2].mean().item(), abs=1e-6)
    assert down.shape == (1, 1, 2, 2)
    up = resize(x, 8)
    assert up.shape == (1, 1, 8, 8)
    assert up.mean().item() == pytest.approx(x.mean().item(), abs=1e-6)
    assert up.min() >= -1.0 and up.max() <= 1.0
    assert resize(x, 4) is x


def test_npz_uint8_and_float(tmp_path):
    hwc = np.random.default_rng(0).integers(0, 256, size=(5, 6, 7, 3), dtype=np.uint8)
    np.savez(tmp_path / "u8.npz", images=hwc, other=np.zeros(3))
    images = load_images(str(tmp_path / "u8.npz"))
    assert images.shape == (5, 3, 6, 7)
    assert images[2, 1, 3, 4].item() == pytest.approx(hwc[2, 3, 4, 1] / 127.5 - 1, abs=1e-6)

    np.savez(tmp_path / "gray.npz", hwc[..., 0])  # a single unnamed array, (N, H, W)
    assert load_images(str(tmp_path / "gray.npz")).shape == (5, 1, 6, 7)

    chw = np.linspace(-1, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    np.savez(tmp_path / "f.npz", images=chw)
    images = load_images(str(tmp_path / "f.npz"), image_size=2)
    assert images.shape == (2, 3, 2, 2) and images.dtype == torch.float32
    assert images[1, 2, 1, 1].item() == pytest.approx(chw[1, 2, 2:, 2:].mean(), abs=1e-6)

    np.savez(tmp_path / "bad.npz", images=chw * 3)
    with pytest.raises(DataError, match=r"must already lie in \[-1, 1\], found values in \[-3.0, 3.0\]"):
        load_images(str(tmp_path / "bad.npz"))
    with pytest.raises(DataError, match="single set of images"):
        load_images(str(tmp_path / "f.npz"), "test")


@pytest.mark.parametrize("kind", ["not-zip", "corrupt-member", "objects"])
def test_unreadable_npz_is_named_and_never_advises_pickle(tmp_path, kind):
    path = tmp_path / "x.npz"
    if kind == "not-zip":
        np.save(tmp_path / "x.npy", np.zeros((2, 4, 4), np.uint8))
        (tmp_path / "x.npy").rename(path)
        expected = "not an .npz file (not a zip archive)"
    elif kind == "corrupt-member":
        with zipfile.ZipFile(path, "w") as archive:  # a zip whose member is no .npy array
            archive.writestr("images.npy", b"garbage bytes, no npy header")
        expected = "is a corrupt .npz file"
    else:
        np.savez(path, images=np.array([{"a": 1}, None], dtype=object))
        expected = "holds Python objects; store the images as a uint8 or float array"
    with pytest.raises(DataError) as info:
        load_images(str(path))
    assert str(path) in str(info.value) and expected in str(info.value)
    assert "allow_pickle" not in str(info.value)


def test_missing_path_and_unlabelled_source(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"the path {missing} does not exist"):
        load_images(str(missing))
    with pytest.raises(DataError, match="split must be one of"):
        load_images("digits", "valid")
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 4, 4), dtype=np.uint8))
    with pytest.raises(DataError, match="has no labels"):
        load_labels(str(tmp_path / "x.npz"))


def test_fashion_mnist_loads():
    if not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is not installed: apt-get install -y dataset-fashion-mnist")
    test = load_images("fashion-mnist", "test")
    labels = load_labels("fashion-mnist", "test")
    assert test.shape == (10000, 1, 28, 28) and labels.shape == (10000,)
    assert test.min() == -1.0 and test.max() == 1.0
    assert torch.bincount(labels).tolist() == [1000] * 10
    assert load_images("fashion-mnist", "test", image_size=16).shape == (10000, 1, 16, 16)


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("GDDIM_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load_images("fashion-mnist")


def test_fashion_mnist_dir_override_reads_idx_files(tmp_path, monkeypatch):
    import gzip

    images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 15
    header = bytes([0, 0, 8, 3]) + np.array([2, 3, 3], dtype=">i4").tobytes()
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + images.tobytes())
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + np.array([2], ">i4").tobytes() + b"\x04\x07")
    monkeypatch.setenv("GDDIM_FASHION_MNIST_DIR", str(tmp_path))
    loaded = load_images("fashion-mnist", "test")
    assert loaded.shape == (2, 1, 3, 3)
    assert torch.allclose(loaded[:, 0], torch.from_numpy(images / 127.5 - 1).float(), atol=1e-6)
    assert load_labels("fashion-mnist", "test").tolist() == [4, 7]


def _ids(batch: torch.Tensor) -> list[int]:
    return batch[:, 0, 0, 0].long().tolist()


def test_loader_shards_are_disjoint_and_cover_the_data():
    n = 20
    images = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    # one epoch per rank: 10 images in batches of 5
    seen = [sum((_ids(b) for b in itertools.islice(make_loader(images, 5, seed=3, rank=r, world_size=2), 2)), [])
            for r in range(2)]
    assert set(seen[0]).isdisjoint(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(n))
    # the next epoch is a fresh permutation, again covering each rank's shard without repeats
    stream = make_loader(images, 5, seed=3, rank=0, world_size=2)
    first, second = (sum((_ids(next(stream)) for _ in range(2)), []) for _ in range(2))
    assert first == seen[0] and sorted(set(second)) == sorted(second) and len(second) == 10
    assert first != second


def test_loader_start_step_reproduces_the_stream_and_flips():
    n = 13  # odd, so batches straddle epochs and one image per epoch is dropped for two ranks
    images = torch.randn(n, 2, 3, 4)
    fresh = list(itertools.islice(make_loader(images, 4, seed=7, rank=1, world_size=2, flip=True), 12))
    resumed = list(itertools.islice(make_loader(images, 4, seed=7, rank=1, world_size=2, flip=True, start_step=5), 7))
    for a, b in zip(fresh[5:], resumed):
        assert torch.equal(a, b)
    flattened = images.flatten(1)
    flips = 0
    for batch in fresh:
        assert batch.shape == (4, 2, 3, 4)
        for x in batch:
            as_is = (flattened == x.flatten()).all(dim=1).any().item()
            flipped = (flattened == x.flip(-1).flatten()).all(dim=1).any().item()
            assert as_is or flipped
            flips += int(flipped and not as_is)
    assert 10 <= flips <= 38  # about half of 48 images are flipped
    other_seed = next(make_loader(images, 4, seed=8, rank=1, world_size=2))
    assert not torch.equal(other_seed, fresh[0])
