"""Sizes that cannot fit are refused before anything is allocated; index_stream is linear in the batch size
and gives the same indices as before."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from clreg.core import sizes
from clreg.core.sizes import MAX_CLASSES, SizeError, check_memory
from clreg.data import DataFileError, load_arrays
from clreg.models.build import build_model, parameter_count
from clreg.train.loop import index_stream
from clreg_cli import invoke_err as invoke



def reference_stream(size, batch_size, seed, drop_last, count):
    """The indices of the first `count` batches as the former index_stream made them: shuffles of range(size)
    drawn one after another from one generator, concatenated (drop_last: each cut to whole batches)."""
    generator = torch.Generator().manual_seed(seed)
    flat: list[int] = []
    while len(flat) < count * batch_size:
        shuffle = torch.randperm(size, generator=generator).tolist()
        flat += shuffle[:size - size % batch_size] if drop_last else shuffle
    return [flat[i * batch_size:(i + 1) * batch_size] for i in range(count)]


@pytest.mark.parametrize("size, batch_size, drop_last", [(10, 4, False), (10, 4, True), (10, 10, False),
                                                         (7, 3, True), (5, 12, False), (100, 32, False), (1, 1, False)])
def test_index_stream_gives_the_former_sequence(size, batch_size, drop_last):
    stream = index_stream(size, batch_size, torch.Generator().manual_seed(3), drop_last=drop_last)
    got = [next(stream).tolist() for _ in range(25)]
    assert got == reference_stream(size, batch_size, 3, drop_last, 25)


def test_index_stream_is_linear_in_the_batch_size():
    """A batch of 700,000 out of 7 examples: 100,000 shuffles, each read once (the former stream copied its
    buffer at every shuffle: about 3.5e10 copies)."""
    start = time.perf_counter()
    batch = next(index_stream(7, 700_000, torch.Generator().manual_seed(0)))
    assert time.perf_counter() - start < 20
    assert torch.equal(torch.bincount(batch), torch.full((7,), 100_000))


def test_parameter_count_allocates_nothing_and_matches_the_network():
    for network, shape, widths, classes in [("mlp", (64,), [20, 10], 10), ("cifar-cnn", (3, 32, 32), [8, 8, 16], [10, 10]),
                                            ("vgg-small", (3, 64, 64), [32, 32], [5, 5])]:
        model = build_model(network, shape, widths, classes)
        assert parameter_count(network, shape, widths, classes) == sum(p.numel() for p in model.parameters())
    assert parameter_count("mlp", (784,), [10 ** 11], 10) == 785 * 10 ** 11 + (10 ** 11 + 1) * 10


def test_check_memory_against_what_is_available(monkeypatch):
    monkeypatch.setattr(sizes, "available_bytes", lambda device="cpu": 10 ** 9)
    check_memory("a thing", 10 ** 9)
    with pytest.raises(SizeError, match=r"^a thing needs about 2 GB, more than the 1 GB .*: lower hidden$") as info:
        check_memory("a thing", 2 * 10 ** 9, lower="hidden")
    assert info.value.cli_message().endswith("lower --hidden")


def test_available_bytes_is_positive_and_at_most_the_machine():
    import os

    assert 0 < sizes.available_bytes("cpu") <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("args, says", [
    (["--tasks", "1000000"], "--tasks"),
    (["--hidden", "99999999999"], "lower --hidden"),
    (["--batch-size", "100000000"], "at most 1438"),  # the training examples of a permuted-digits task
    (["--task-sizes", "100,100", "--tasks", "2", "--batch-size", "101"], "at most 100"),
    (["--threads", "100000"], "--threads"),
])
def test_sizes_that_cannot_fit_are_one_line_and_exit_2(monkeypatch, capsys, args, says):
    start = time.perf_counter()
    code, err = invoke(monkeypatch, capsys, "run", "--benchmark", "permuted-digits", "--quiet", *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and says in err, err
    assert time.perf_counter() - start < 15


def test_memory_of_the_network_is_checked_with_its_copies(monkeypatch, capsys):
    """A network that fits once but not with the copies a run keeps (weights, gradients, Adam's moments, ...)."""
    monkeypatch.setattr(sizes, "available_bytes", lambda device="cpu": 64 * 5000 * 4 * 4)
    code, err = invoke(monkeypatch, capsys, "run", "--benchmark", "permuted-digits", "--tasks", "2", "--hidden",
                       "5000")
    assert code == 2 and "lower --hidden" in err and "copies" in err, err


def write_npz(path, x, y):
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
    return path


def test_npz_sizes_refused_naming_file_and_array(tmp_path):
    x = np.ones((6, 3), np.float32)
    y = np.array([0, 1, 0, 1, 0, 1])
    with pytest.raises(DataFileError, match=r"huge.npz: y_train has the label 1000000000.*below 100,000"):
        load_arrays(write_npz(tmp_path / "huge.npz", x, np.where(y == 0, 10 ** 9, 1)))
    load_arrays(write_npz(tmp_path / "edge.npz", x, np.where(y == 0, MAX_CLASSES - 1, 1)))
    with pytest.raises(DataFileError, match=r"flat.npz: x_train has examples of no features"):
        load_arrays(write_npz(tmp_path / "flat.npz", x[:, :0], y))
    with pytest.raises(DataFileError, match=r"none.npz: x_train must have shape \(n >= 1"):
        load_arrays(write_npz(tmp_path / "none.npz", x[:0], y[:0]))
    np.savez(tmp_path / "tasks.npz", x_train=x, y_train=y, x_test=x, y_test=y, task_train=np.array([0] * 5 + [10 ** 9]),
             task_test=np.zeros(6, int))
    with pytest.raises(DataFileError, match=r"tasks.npz: task_train has task 1000000000, but"):
        load_arrays(tmp_path / "tasks.npz")
