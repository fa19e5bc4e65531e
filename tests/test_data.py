"""The IDX reader and the MNIST loader: generated files, error paths, the real copy."""
import gzip
import struct

import numpy as np
import pytest

from clreg.data import DataFileError, load_mnist, read_idx
from clreg.data.mnist import FILES


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize("compressed", [False, True])
def test_reads_generated_idx(tmp_path, images, compressed):
    path = tmp_path / ("x.idx.gz" if compressed else "x.idx")
    content = idx_bytes(images)
    path.write_bytes(gzip.compress(content) if compressed else content)
    np.testing.assert_array_equal(read_idx(path), images)


@pytest.mark.parametrize("compressed", [False, True])
def test_rejects_truncated_file(tmp_path, images, compressed):
    content = idx_bytes(images)
    data = gzip.compress(content) if compressed else content
    path = tmp_path / "cut.idx"
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(DataFileError, match="cut.idx.*truncated"):
        read_idx(path)


def test_rejects_corrupted_files(tmp_path, images):
    bad_magic = bytearray(idx_bytes(images))
    bad_magic[2] = 0x42
    (tmp_path / "magic.idx").write_bytes(bytes(bad_magic))
    with pytest.raises(DataFileError, match="magic.idx.*magic"):
        read_idx(tmp_path / "magic.idx")
    packed = bytearray(gzip.compress(idx_bytes(images)))
    packed[len(packed) // 2] ^= 0xFF  # flip a byte inside the compressed stream
    (tmp_path / "flip.gz").write_bytes(bytes(packed))
    with pytest.raises(DataFileError, match="flip.gz.*corrupt"):
        read_idx(tmp_path / "flip.gz")


def test_mnist_loader_rejects_non_canonical_content(tmp_path, images, monkeypatch):
    monkeypatch.setenv("CLREG_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "mnist"
    root.mkdir()
    labels = np.arange(7, dtype=np.uint8) % 10
    for key, (name, _, _) in FILES.items():
        content = idx_bytes(images if "images" in key else labels)
        (root / name).write_bytes(gzip.compress(content))
    data = load_mnist(tmp_path, verify=False, download=False)
    assert data.x_train.shape == (7, 28, 28) and list(data.y_test) == list(labels)
    with pytest.raises(DataFileError, match="train-images-idx3-ubyte.gz.*canonical"):
        load_mnist(tmp_path, download=False)


def test_missing_files_give_one_error_naming_them(tmp_path, monkeypatch):
    monkeypatch.setenv("CLREG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CLREG_DATA_DIR", raising=False)
    (tmp_path / "nowhere").mkdir()  # a folder without the files (a folder that is not there: test_settings.py)
    with pytest.raises(DataFileError) as err:
        load_mnist(tmp_path / "nowhere", download=False)
    message = str(err.value)
    for name, _, _ in FILES.values():
        assert name in message
    assert "--data-dir" in message


def test_real_mnist_label_counts(mnist_dir):
    data = load_mnist(mnist_dir, download=False)
    assert data.x_train.shape == (60000, 28, 28) and data.x_test.shape == (10000, 28, 28)
    counts = np.bincount(data.y_train, minlength=10)
    assert counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
