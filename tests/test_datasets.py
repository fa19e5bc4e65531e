"""Fashion-MNIST, downloads with checksums, Tiny ImageNet: generated files in the canonical formats, plus the
real copies where present."""
import functools
import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from clreg.data import DataFileError, load_fashion_mnist, load_tiny_imagenet
from clreg.data import cifar, mnist
from clreg.data.fetch import RemoteFile, download_archive
from test_data import idx_bytes


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLREG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CLREG_DATA_DIR", raising=False)


def test_fashion_mnist_is_found_where_debian_puts_it(tmp_path, monkeypatch):
    system = tmp_path / "usr-share-datasets"
    (system / "fashion-mnist").mkdir(parents=True)
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([9, 0, 0, 3, 0], dtype=np.uint8)
    for key, (name, _, _) in mnist.FASHION_FILES.items():
        (system / "fashion-mnist" / name).write_bytes(idx_bytes(images if "images" in key else labels))
    monkeypatch.setattr(mnist, "DEBIAN_ROOT", str(system))
    (tmp_path / "elsewhere").mkdir()  # a data directory without fashion-mnist/
    data = load_fashion_mnist(tmp_path / "elsewhere", verify=False, download=False)
    assert np.array_equal(data.x_test, images) and data.y_train.tolist() == [9, 0, 0, 3, 0]
    with pytest.raises(DataFileError, match="canonical Fashion-MNIST"):
        load_fashion_mnist(tmp_path / "elsewhere", download=False)
    monkeypatch.setattr(mnist, "DEBIAN_ROOT", str(tmp_path / "none"))
    with pytest.raises(DataFileError, match="fashion-mnist not found.*train-images-idx3-ubyte.gz"):
        load_fashion_mnist(tmp_path / "elsewhere", download=False)


@pytest.mark.skipif(not Path(mnist.DEBIAN_ROOT, "fashion-mnist").is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    data = load_fashion_mnist(download=False)
    assert data.x_train.shape == (60000, 28, 28) and np.bincount(data.y_train).tolist() == [6000] * 10
    assert data.y_train[:5].tolist() == [9, 0, 0, 3, 0] and data.y_test[:5].tolist() == [9, 2, 1, 1, 6]


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over tmp_path/served: (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def cifar_binary_tarball(path: Path) -> list[np.ndarray]:
    batches = []
    with tarfile.open(path, "w:gz") as tar:
        for i, name in enumerate(cifar.CIFAR10_BINARY):
            rng = np.random.default_rng(i)
            records = np.concatenate([rng.integers(0, 10, (3, 1)), rng.integers(0, 256, (3, 3072))], 1).astype(np.uint8)
            batches.append(records)
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = records.nbytes
            tar.addfile(info, io.BytesIO(records.tobytes()))
    return batches


def test_cifar10_is_downloaded_checked_unpacked_and_cached(tmp_path, server, monkeypatch):
    folder, url = server
    batches = cifar_binary_tarball(folder / "cifar-10-binary.tar.gz")
    md5 = hashlib.md5((folder / "cifar-10-binary.tar.gz").read_bytes()).hexdigest()
    monkeypatch.setattr(cifar, "CIFAR10_ARCHIVE", RemoteFile("cifar-10-binary.tar.gz", md5, (url,)))
    (tmp_path / "nothing-here").mkdir()  # a data directory without cifar10/
    data = cifar.load_cifar10(tmp_path / "nothing-here")
    assert data.x_train.shape == (15, 3, 32, 32) and data.y_test.tolist() == batches[5][:, 0].tolist()
    assert (tmp_path / "cache" / "cifar10" / "cifar-10-batches-bin" / "test_batch.bin").is_file()
    (folder / "cifar-10-binary.tar.gz").unlink()  # the second load needs no server
    assert np.array_equal(cifar.load_cifar10(tmp_path / "nothing-here").x_train, data.x_train)


def test_a_download_with_the_wrong_checksum_is_refused(tmp_path, server, monkeypatch):
    folder, url = server
    cifar_binary_tarball(folder / "cifar-10-binary.tar.gz")
    monkeypatch.setattr(cifar, "CIFAR10_ARCHIVE", RemoteFile("cifar-10-binary.tar.gz", "0" * 32, (url,)))
    (tmp_path / "nothing-here").mkdir()
    with pytest.raises(DataFileError, match="cifar10 not found.*download failed.*md5"):
        cifar.load_cifar10(tmp_path / "nothing-here")
    assert not (tmp_path / "cache" / "cifar10" / "cifar-10-batches-bin").exists()


def test_download_archive_reports_unreachable_mirrors(tmp_path):
    with pytest.raises(DataFileError, match="could not download x.tar.gz"):
        download_archive("x", RemoteFile("x.tar.gz", "0" * 32, ("http://127.0.0.1:9/",)))


def write_tiny_imagenet(root: Path, classes: int = 20, per_class: int = 5, val_per_class: int = 2,
                        order: list[str] | None = None) -> list[str]:
    """The canonical layout with uniform-colour JPEGs whose red channel encodes (class, image)."""
    from PIL import Image

    folder = root / "tiny-imagenet" / "tiny-imagenet-200"
    wnids = [f"n{i:08d}" for i in range(classes)]
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    if order:
        (folder / "classes.txt").write_text("\n".join(order) + "\n")
    for c, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (64, 64), (10 * c % 250, 40 * i, 7)).save(images / f"{wnid}_{i}.JPEG", quality=100)
    lines = []
    for c, wnid in enumerate(wnids):
        for i in range(val_per_class):
            name = f"val_{c * val_per_class + i}.JPEG"
            Image.new("L", (64, 64), 5 * c).save(folder / "val" / "images" / name, quality=100)  # greyscale, as some are
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return wnids


def test_tiny_imagenet_reader_and_the_de_lange_task_split(tmp_path):
    pytest.importorskip("PIL")
    from clreg.benchmarks import split_tiny_imagenet

    wnids = write_tiny_imagenet(tmp_path)
    order = wnids[10:] + wnids[:10]  # a survey-style order file puts class 10 first
    write_tiny_imagenet(tmp_path / "ordered", order=order)
    data, classes = load_tiny_imagenet(tmp_path / "ordered", download=False)
    assert classes == order and data.x_train.shape == (100, 3, 64, 64) and data.x_test.shape == (40, 3, 64, 64)
    assert data.y_train[:5].tolist() == [0] * 5 and abs(int(data.x_train[0, 0, 0, 0]) - 100) <= 2  # class 10: red 100
    assert abs(int(data.x_test[0, 1, 5, 5]) - 0) <= 2 and data.y_test[0] == 10  # val_0 is class 0, now 10th
    bench = split_tiny_imagenet(2, "test", tmp_path / "ordered")
    assert bench.num_tasks == 2 and bench.classes == [10, 10]
    assert [len(t.train) for t in bench.tasks] == [40, 40] and [len(t.evaluation) for t in bench.tasks] == [20, 20]
    task = split_tiny_imagenet(1, "validation", tmp_path / "ordered").tasks[0]
    key = lambda split: {(round(255 * float(x[0, 0, 0])), round(255 * float(x[1, 0, 0])) // 10) for x in split.x}  # noqa: E731
    train, held = key(task.train), key(task.evaluation)
    assert len(held) == 10 and len(train) == 40 and not train & held  # 80/20 of task 1's 50 training images
    assert key(split_tiny_imagenet(1, "validation", tmp_path / "ordered").tasks[0].evaluation) == held  # fixed split
    with pytest.raises(ValueError, match="split-tiny-imagenet has 20 tasks; --tasks must be 1..20, got 21"):
        split_tiny_imagenet(21, "test", tmp_path / "ordered")


def test_tiny_imagenet_errors_name_the_file(tmp_path):
    pytest.importorskip("PIL")
    wnids = write_tiny_imagenet(tmp_path, classes=10, per_class=1, val_per_class=1)
    folder = tmp_path / "tiny-imagenet" / "tiny-imagenet-200"
    (folder / "classes.txt").write_text("\n".join(wnids[:9]) + "\n")
    with pytest.raises(DataFileError, match="classes.txt: must list each of the 10 classes"):
        load_tiny_imagenet(tmp_path, download=False)
    (folder / "classes.txt").unlink()
    (folder / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DataFileError, match="class n99999999 is not in wnids.txt"):
        load_tiny_imagenet(tmp_path, download=False)
    (tmp_path / "nowhere").mkdir()  # a folder without the data (a folder that is not there: test_settings.py)
    with pytest.raises(DataFileError, match="Tiny ImageNet not found"):
        load_tiny_imagenet(tmp_path / "nowhere", download=False)
