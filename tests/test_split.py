"""Task-incremental benchmarks: split-cifar10-100 on generated files, split-cifar10 and split-mnist on the real
copies, the per-task 90/10 split, equal_iter and drop-last epochs; the integration run of the issue."""
import numpy as np
import pytest
import torch

from clreg.benchmarks import build_benchmark, split_cifar10, split_cifar10_100, split_mnist
from clreg.train.config import RunConfig
from clreg.data import cifar
from clreg.train.loop import Trainer, index_stream, run
from test_cifar import REAL, write_binary, write_python

HAS_CIFAR10 = (REAL / "cifar10" / "cifar-10-batches-bin").is_dir()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLREG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CLREG_DATA_DIR", raising=False)


def test_split_cifar10_100_on_generated_files(tmp_path):
    c10 = write_binary(tmp_path / "cifar10" / "cifar-10-batches-bin", per_file=20)
    c100 = write_python(tmp_path / "cifar100" / "cifar-100-python", list(cifar.CIFAR100_PYTHON), "fine_labels", 100,
                        per_file=3000)
    bench = split_cifar10_100(None, "test", tmp_path, trust_pickle=True)
    assert bench.num_tasks == 6 and bench.classes == [10] * 6 and bench.input_shape == (3, 32, 32)
    assert len(bench.tasks[0].train) == 90 and len(bench.tasks[0].evaluation) == 20  # 90% of 100, CIFAR-10's test
    x100, y100 = c100[0]
    in_task = (y100 >= 20) & (y100 < 30)  # task 4: fine classes 20..29, relabelled 0..9
    n = int(in_task.sum())
    train = bench.tasks[3].train
    assert len(train) == n - round(0.1 * n)
    assert train.y.tolist() == (y100[in_task][:len(train)] - 20).tolist()
    torch.testing.assert_close(train.x[0], torch.from_numpy(x100[in_task][0].astype(np.float32) / 255))
    validation = split_cifar10_100(None, "validation", tmp_path, trust_pickle=True).tasks[3].evaluation
    assert validation.y.tolist() == (y100[in_task][len(train):] - 20).tolist()
    x10 = np.concatenate([x for x, _ in c10[:5]])
    torch.testing.assert_close(bench.tasks[0].train.x[0], torch.from_numpy(x10[0].astype(np.float32) / 255))


def test_equal_iter_gives_later_tasks_the_first_tasks_steps(tmp_path):
    write_binary(tmp_path / "cifar10" / "cifar-10-batches-bin", per_file=100)  # 450 training images in task 1
    write_python(tmp_path / "cifar100" / "cifar-100-python", list(cifar.CIFAR100_PYTHON), "fine_labels", 100,
                 per_file=1000)
    bench = split_cifar10_100(3, "test", tmp_path, trust_pickle=True)
    config = dict(benchmark="split-cifar10-100", method="finetune", epochs=2, batch_size=8, hidden=[2, 2, 4])
    sizes = [bench.epoch_size(t) for t in range(3)]
    plain = Trainer(RunConfig(**config), bench, progress=False)
    equal = Trainer(RunConfig(equal_iter=True, **config), bench, progress=False)
    assert [plain.steps_per_task(t) for t in range(3)] == [2 * (n // 8) for n in sizes]
    factors = [round(sizes[0] / n) for n in sizes]
    assert factors[0] == 1 and factors[1] >= 4  # ~90 training images per CIFAR-100 task against 450
    assert [equal.steps_per_task(t) for t in range(3)] == [2 * f * (n // 8) for f, n in zip(factors, sizes)]


def test_drop_last_epochs_are_full_batches_of_one_shuffle():
    stream = index_stream(10, 4, torch.Generator().manual_seed(0), drop_last=True)
    epoch = torch.cat([next(stream), next(stream)])
    assert len(set(epoch.tolist())) == 8  # two full batches per epoch, no repeats, the other 2 dropped
    assert len(set(torch.cat([next(stream), next(stream)]).tolist())) == 8
    crossing = index_stream(10, 4, torch.Generator().manual_seed(0))
    assert len(set(torch.cat([next(crossing) for _ in range(5)]).tolist())) == 10  # P-MNIST style: across shuffles
    with pytest.raises(ValueError, match="a task has 3 training examples, fewer than one batch of 4"):
        next(index_stream(3, 4, torch.Generator(), drop_last=True))


@pytest.mark.slow
@pytest.mark.skipif(not HAS_CIFAR10, reason="no real CIFAR-10 copy")
def test_split_cifar10_real():
    bench = split_cifar10(None, "test", REAL)
    assert bench.num_tasks == 5 and bench.classes == [2] * 5
    assert [len(t.train) for t in bench.tasks] == [9000] * 5 and [len(t.evaluation) for t in bench.tasks] == [2000] * 5
    assert torch.bincount(bench.tasks[3].evaluation.y).tolist() == [1000, 1000]  # classes 6 and 7
    assert bench.tasks[3].train.y[0] == 0 and bench.tasks[3].train.x[0, :, 0, 0].mul(255).round().tolist() == [59, 62, 63]


@pytest.mark.slow
def test_split_mnist_real(mnist_dir):
    bench = split_mnist(None, "validation", mnist_dir)
    assert bench.num_tasks == 5 and bench.input_shape == (784,) and bench.classes == [2] * 5
    counts = [5923 + 6742, 5958 + 6131, 5842 + 5421, 5918 + 6265, 5851 + 5949]  # MNIST's per-digit train counts
    assert [len(t.train) + len(t.evaluation) for t in bench.tasks] == counts
    assert all(len(t.evaluation) == round(0.1 * n) for t, n in zip(bench.tasks, counts))
    with pytest.raises(ValueError, match="split-mnist has 5 tasks; --tasks must be 1..5, got 6"):
        build_benchmark("split-mnist", 6, 0, "test", mnist_dir)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_CIFAR10, reason="no real CIFAR-10 copy")
def test_split_cifar10_two_tasks_one_epoch_learns_both():
    config = RunConfig(benchmark="split-cifar10", method="si", c=5.0, tasks=2, epochs=1, hidden=[8, 16, 64],
                       data_dir=str(REAL))
    result = run(config, progress=False)
    assert result["config"]["network"] == "cifar-cnn" and result["config"]["samples"] == 500
    assert min(result["accuracy_matrix"][1]) > 0.58  # both tasks above chance (0.5) after the second task
