"""CIFAR readers on generated files in the canonical formats, their error paths, and the real CIFAR-10 copy."""
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from clreg.data import DataFileError
from clreg.data import cifar


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLREG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CLREG_DATA_DIR", raising=False)


def fake_images(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n)


def write_binary(folder: Path, per_file=7):
    folder.mkdir(parents=True)
    expected = []
    for i, name in enumerate(cifar.CIFAR10_BINARY):
        x, y = fake_images(per_file, i)
        records = np.concatenate([y[:, None].astype(np.uint8), x.reshape(per_file, -1)], axis=1)
        records.tofile(folder / name)
        expected.append((x, y))
    return expected


def write_python(folder: Path, names, label_key, classes, per_file=6):
    folder.mkdir(parents=True)
    expected = []
    for i, name in enumerate(names):
        x, _ = fake_images(per_file, i)
        y = np.random.default_rng(100 + i).integers(0, classes, per_file)
        entry = {b"data": x.reshape(per_file, -1), label_key.encode(): [int(v) for v in y], b"batch_label": b"x"}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        expected.append((x, y))
    return expected


def test_binary_version_round_trip_and_cache(tmp_path, monkeypatch):
    expected = write_binary(tmp_path / "cifar10" / "cifar-10-batches-bin")
    data = cifar.load_cifar10(tmp_path)
    np.testing.assert_array_equal(data.x_train, np.concatenate([e[0] for e in expected[:5]]))
    np.testing.assert_array_equal(data.y_train, np.concatenate([e[1] for e in expected[:5]]))
    np.testing.assert_array_equal(data.x_test, expected[5][0])
    # the second load comes from the array cache: the parser is not called again
    monkeypatch.setattr(cifar, "read_binary_batch", lambda *a: pytest.fail("parsed again"))
    np.testing.assert_array_equal(cifar.load_cifar10(tmp_path).x_train, data.x_train)


def test_python_versions_need_the_canonical_checksum_or_an_explicit_opt_in(tmp_path):
    expected = write_python(tmp_path / "cifar10" / "cifar-10-batches-py", list(cifar.CIFAR10_PYTHON), "labels", 10)
    with pytest.raises(DataFileError, match=r"md5 differs.*trust_pickle=True"):
        cifar.load_cifar10(tmp_path)
    data = cifar.load_cifar10(tmp_path, trust_pickle=True)
    np.testing.assert_array_equal(data.y_test, expected[5][1])
    expected100 = write_python(tmp_path / "cifar100" / "cifar-100-python", ["train", "test"], "fine_labels", 100)
    data100 = cifar.load_cifar100(tmp_path, trust_pickle=True)
    np.testing.assert_array_equal(data100.x_train, expected100[0][0])
    np.testing.assert_array_equal(data100.y_train, expected100[0][1])


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_that_would_run_code_is_refused_even_when_trusted(tmp_path):
    folder = tmp_path / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    for name in ("train", "test"):
        (folder / name).write_bytes(pickle.dumps({b"data": Exploit(), b"fine_labels": []}))
    with pytest.raises(DataFileError, match="refusing to load (posix|os).system"):
        cifar.load_cifar100(tmp_path, trust_pickle=True)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:-5]), "not a whole number of 3073-byte CIFAR records"),
    (lambda p: p.write_bytes(b""), "not a whole number"),
    (lambda p: p.write_bytes(bytes([12]) + bytes(3072)), r"expected 1 labels in 0\.\.9"),
])
def test_damaged_binary_files_are_named(tmp_path, damage, message):
    write_binary(tmp_path / "cifar10" / "cifar-10-batches-bin")
    target = tmp_path / "cifar10" / "cifar-10-batches-bin" / "data_batch_3.bin"
    damage(target)
    with pytest.raises(DataFileError, match=message) as info:
        cifar.load_cifar10(tmp_path)
    assert "data_batch_3.bin" in str(info.value)


def test_missing_data_names_both_layouts(tmp_path):
    with pytest.raises(DataFileError, match="cifar-10-batches-bin/.*cifar-10-batches-py/"):
        cifar.load_cifar10(tmp_path)


REAL = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.mark.skipif(not (REAL / "cifar10" / "cifar-10-batches-bin").is_dir(), reason="no real CIFAR-10 copy")
def test_real_cifar10():
    data = cifar.load_cifar10(REAL)
    assert data.x_train.shape == (50000, 3, 32, 32) and data.x_test.shape == (10000, 3, 32, 32)
    assert np.bincount(data.y_train).tolist() == [5000] * 10 and np.bincount(data.y_test).tolist() == [1000] * 10
    assert data.y_train[0] == 6 and data.x_train[0, :, 0, 0].tolist() == [59, 62, 63] and data.y_test[0] == 3
