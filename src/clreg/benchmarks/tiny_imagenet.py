"""Split Tiny ImageNet as in De Lange et al. 2019 (the paper's table 2): tasks of consecutive classes in the
class order (their survey order if tiny-imagenet-200/classes.txt gives it), 10 per task by default (20
tasks) or `--split-classes K` (their code uses 20: 10 tasks); per task a fixed random 80/20 split of the
training images into train/validation; the labelled validation images are the test set. Their networks
are clreg.models.vgg's, their schedule `--lr-schedule plateau`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from clreg.data.tiny_imagenet import load_tiny_imagenet
from clreg.benchmarks.base import Split, check_evaluate_on, check_task_count, derive_seed
from clreg.benchmarks.registry import register
from clreg.benchmarks.split import CIFAR, SplitBenchmark, TaskData

CLASSES, CLASSES_PER_TASK, VALIDATION = 200, 10, 0.2


def tiny_imagenet_tasks(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                        count: int, evaluate_on: str, per_task: int = CLASSES_PER_TASK) -> list[TaskData]:
    """Task t holds classes per_task·t … per_task·(t+1) − 1 (labels relabelled 0..per_task−1); its validation
    split is fixed (seed 0)."""
    check_evaluate_on(evaluate_on)
    tasks = []
    for t in range(count):
        low = per_task * t
        train_index = np.flatnonzero((y_train >= low) & (y_train < low + per_task))
        test_index = np.flatnonzero((y_test >= low) & (y_test < low + per_task))
        order = np.random.default_rng(derive_seed(0, 6, t)).permutation(train_index)
        cut = len(order) - int(round(VALIDATION * len(order)))
        train = Split.from_images(x_train[order[:cut]], y_train[order[:cut]] - low, flatten=False)
        held = Split.from_images(x_train[order[cut:]], y_train[order[cut:]] - low, flatten=False)
        test = Split.from_images(x_test[test_index], y_test[test_index] - low, flatten=False)
        tasks.append(TaskData(train, held if evaluate_on == "validation" else test, per_task, held))
    return tasks


def split_tiny_imagenet(num_tasks: int | None = None, evaluate_on: str = "test", data_dir: str | Path | None = None,
                        per_task: int | None = None) -> SplitBenchmark:
    """Tiny ImageNet in tasks of `per_task` classes (default 10: 20 tasks; needs the download, about 240 MB,
    and Pillow to decode it once)."""
    per_task = per_task or CLASSES_PER_TASK
    if CLASSES % per_task:
        raise ValueError(f"split-tiny-imagenet: --split-classes must divide its {CLASSES} classes, got {per_task}")
    count = check_task_count("split-tiny-imagenet", num_tasks, CLASSES // per_task)
    data, _ = load_tiny_imagenet(data_dir)
    if data.y_train.max() + 1 < per_task * count:
        raise ValueError(f"Tiny ImageNet here has {data.y_train.max() + 1} classes, too few for {count} tasks of "
                         f"{per_task}")
    return SplitBenchmark("split-tiny-imagenet", tiny_imagenet_tasks(data.x_train, data.y_train, data.x_test,
                                                                     data.y_test, count, evaluate_on, per_task))


register("split-tiny-imagenet", lambda r: split_tiny_imagenet(r.tasks, r.evaluate_on, r.data_dir, r.split_classes),
         CIFAR, options=("split_classes",))
