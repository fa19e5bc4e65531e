"""`arrays:PATH`: a benchmark from a user's own .npz, with the tasks in the file or made by a recipe."""
from __future__ import annotations

import numpy as np

from clreg.data.arrays import UserArrays, load_arrays
from clreg.data.idx import DataFileError
from clreg.benchmarks.base import HOLDOUT, Defaults, Split, check_evaluate_on
from clreg.benchmarks.permuted import PermutedBenchmark, permuted_split, sized
from clreg.benchmarks.registry import Request, register
from clreg.benchmarks.split import SplitBenchmark, TaskData, class_tasks


def arrays_benchmark(path: str, num_tasks: int | None, seed: int, evaluate_on: str, split_classes: int | None,
                     permute: int | None) -> SplitBenchmark | PermutedBenchmark:
    """Tasks from the file's task_train/task_test (multi-head), from --split-classes K (consecutive groups of
    K sorted classes, multi-head) or from --permute T (T pixel permutations, one shared head)."""
    check_evaluate_on(evaluate_on)
    data = load_arrays(path)
    recipes = [name for name, given in (("task arrays in the file", data.task_train is not None),
                                        ("--split-classes", split_classes), ("--permute", permute)) if given]
    if len(recipes) != 1:
        raise ValueError(f"arrays:{path} needs exactly one way to make tasks: task_train/task_test in the file, "
                         f"--split-classes K or --permute T; got {', '.join(recipes) or 'none'}")
    name = f"arrays:{path}"
    if permute:
        classes = int(max(data.y_train.max(), data.y_test.max())) + 1
        return permuted_split(name, _split(data.x_train, data.y_train), _split(data.x_test, data.y_test),
                              num_tasks or permute, seed, classes, evaluate_on)
    tasks = _class_groups(data, split_classes, path) if split_classes else _given_tasks(data, evaluate_on)
    if split_classes:
        tasks = class_tasks(data.x_train, data.y_train, data.x_test, data.y_test, tasks, evaluate_on, flatten=False)
    if num_tasks is not None:
        if not 1 <= num_tasks <= len(tasks):
            raise ValueError(f"{name} has {len(tasks)} tasks; --tasks must be 1..{len(tasks)}, got {num_tasks}")
        tasks = tasks[:num_tasks]
    return SplitBenchmark(name, tasks)


def _class_groups(data: UserArrays, k: int, path: str) -> list[list[int]]:
    classes = np.unique(data.y_train).tolist()
    if k < 1 or len(classes) % k:
        raise ValueError(f"arrays:{path}: {len(classes)} classes in y_train cannot be split into tasks of "
                         f"--split-classes {k} (it must divide the number of classes)")
    unseen = sorted(set(np.unique(data.y_test).tolist()) - set(classes))
    if unseen:
        raise DataFileError(f"arrays:{path}: y_test has classes {unseen[:5]} that y_train never shows")
    return [classes[i:i + k] for i in range(0, len(classes), k)]


def _given_tasks(data: UserArrays, evaluate_on: str) -> list[TaskData]:
    """Tasks from task ids; labels relabelled per task to 0..k−1 in sorted order."""
    tasks = []
    for t in range(int(data.task_train.max()) + 1):
        train_y, test_y = data.y_train[data.task_train == t], data.y_test[data.task_test == t]
        classes = np.unique(train_y)
        if not np.isin(test_y, classes).all():
            raise DataFileError(f"task {t}: y_test has labels that the task's training data never shows")
        train = _split(data.x_train[data.task_train == t], np.searchsorted(classes, train_y))  # position in classes
        test = _split(data.x_test[data.task_test == t], np.searchsorted(classes, test_y))
        train, validation = train.head(HOLDOUT)
        tasks.append(TaskData(train, validation if evaluate_on == "validation" else test, len(classes), validation))
    return tasks


def _split(x: np.ndarray, y: np.ndarray) -> Split:
    return Split.from_images(x, y, flatten=False)


def _build(request: Request) -> SplitBenchmark | PermutedBenchmark:
    bench = arrays_benchmark(request.path, request.tasks, request.seed, request.evaluate_on, request.split_classes,
                             request.permute)
    if request.task_sizes is not None and not isinstance(bench, PermutedBenchmark):
        raise ValueError(f"task_sizes applies to permuted tasks (tasks of one image set): give arrays:{request.path} "
                         "--permute T, not its own tasks or --split-classes")
    return sized(bench, request) if isinstance(bench, PermutedBenchmark) else bench


register("arrays:PATH", _build, Defaults("mlp", (400, 400), 0.1, 500),
         options=("split_classes", "permute", "task_sizes"))
