"""arrays:PATH — a user's own .npz: validation errors, the task recipes, an end-to-end run."""
import numpy as np
import pytest
import torch

from clreg.benchmarks import build_benchmark
from clreg.train.config import RunConfig
from clreg.data import DataFileError, load_arrays
from clreg.train.loop import run


def make(tmp_path, name="data.npz", n=60, classes=4, **overrides):
    rng = np.random.default_rng(0)
    y_train, y_test = np.arange(n) % classes, np.arange(n // 2) % classes
    arrays = dict(x_train=rng.integers(0, 256, (n, 2, 3), dtype=np.uint8), y_train=y_train,
                  x_test=rng.integers(0, 256, (n // 2, 2, 3), dtype=np.uint8), y_test=y_test)
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("overrides,message", [
    (dict(y_test=None), "missing arrays y_test"),
    (dict(x_trian=np.zeros((2, 2))), r"unknown arrays x_trian \(allowed: x_train, y_train, x_test, y_test, and optionally"),
    (dict(x_train=np.zeros((60, 6), dtype=np.int32)), "x_train must be uint8 .* or float, got int32"),
    (dict(x_test=np.zeros(30, dtype=np.float32)), r"x_test must have shape \(n >= 1, features...\), got \(30,\)"),
    (dict(x_test=np.full((30, 6), np.nan, dtype=np.float32)), "x_test contains NaN or infinite values"),
    (dict(x_test=np.zeros((30, 3, 2), dtype=np.uint8)), r"x_train's example shape \(2, 3\) differs from x_test's \(3, 2\)"),
    (dict(y_train=np.arange(60) * 0.5), "y_train must be integers, got float64"),
    (dict(y_train=np.arange(59)), r"y_train must have shape \(60,\), one per example of x_train, got \(59,\)"),
    (dict(y_test=np.arange(30) - 1), "y_test must be >= 0, found -1"),
    (dict(task_train=np.zeros(60, dtype=int)), "give both task_train and task_test, or neither"),
    (dict(task_train=np.arange(60) % 3, task_test=np.arange(30) % 2), "task_test has no example of task 2 .empty task."),
])
def test_bad_arrays_are_named(tmp_path, overrides, message):
    with pytest.raises(DataFileError, match=message):
        load_arrays(make(tmp_path, **overrides))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, x_train=np.array([{"a": 1}], dtype=object), y_train=np.zeros(1, int), x_test=np.zeros((1, 1)),
             y_test=np.zeros(1, int))
    with pytest.raises(DataFileError, match="object arrays are refused"):
        load_arrays(path)
    with pytest.raises(DataFileError, match="no such file"):
        load_arrays(tmp_path / "absent.npz")


def test_split_classes_makes_relabelled_tasks_with_a_held_out_tail(tmp_path):
    path = make(tmp_path, classes=4)
    bench = build_benchmark(f"arrays:{path}", None, 0, "test", split_classes=2)
    assert bench.multi_head and bench.num_tasks == 2 and bench.classes == [2, 2]
    data = load_arrays(path)
    first = data.y_train < 2  # task 1: classes 0 and 1, first 90% in file order
    expected = data.x_train[first][:27].astype(np.float32) / 255
    assert torch.equal(bench.tasks[0].train.x, torch.from_numpy(expected))
    assert bench.tasks[1].train.y.tolist() == (data.y_train[~first][:27] - 2).tolist()
    held = build_benchmark(f"arrays:{path}", None, 0, "validation", split_classes=2).tasks[1].evaluation
    assert held.y.tolist() == (data.y_train[~first][27:] - 2).tolist()
    with pytest.raises(ValueError, match="4 classes in y_train cannot be split into tasks of --split-classes 3"):
        build_benchmark(f"arrays:{path}", None, 0, "test", split_classes=3)


def test_task_ids_in_the_file_and_the_permute_recipe(tmp_path):
    task_train, task_test = np.arange(60) // 30, np.arange(30) // 15
    path = make(tmp_path, y_train=np.arange(60) % 3 + 5 * (np.arange(60) // 30), y_test=np.arange(30) % 3 + 5 * (np.arange(30) // 15),
                task_train=task_train, task_test=task_test)
    bench = build_benchmark(f"arrays:{path}", None, 0, "test")
    assert bench.classes == [3, 3] and sorted(set(bench.tasks[1].evaluation.y.tolist())) == [0, 1, 2]
    permuted = build_benchmark(f"arrays:{make(tmp_path, 'p.npz')}", None, 0, "test", permute=3)
    assert not permuted.multi_head and permuted.num_tasks == 3 and permuted.input_shape == (6,) and permuted.classes == 4
    with pytest.raises(ValueError, match="needs exactly one way to make tasks.*got task arrays in the file, --permute"):
        build_benchmark(f"arrays:{path}", None, 0, "test", permute=2)
    with pytest.raises(ValueError, match="got none"):
        build_benchmark(f"arrays:{make(tmp_path, 'q.npz')}", None, 0, "test")


def test_a_run_on_user_arrays_learns(tmp_path):
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 10)) * 3
    y_train, y_test = rng.integers(0, 4, 800), rng.integers(0, 4, 200)
    path = make(tmp_path, x_train=(centres[y_train] + rng.normal(size=(800, 10))).astype(np.float32), y_train=y_train,
                x_test=(centres[y_test] + rng.normal(size=(200, 10))).astype(np.float32), y_test=y_test)
    result = run(RunConfig(benchmark=f"arrays:{path}", split_classes=2, method="si", c=1.0, epochs=3, batch_size=32, lr=1e-2,
                           hidden=[20]), progress=False)
    assert result["config"]["hidden"] == [20] and result["benchmark"]["classes"] == [2, 2]
    assert min(result["accuracy_matrix"][1]) > 0.8  # both tasks far above chance (0.5)
