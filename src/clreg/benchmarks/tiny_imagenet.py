"""Split Tiny ImageNet as in De Lange et al. 2019 (the paper's table 2): 20 tasks of 10 consecutive classes
in the class order (their survey order if tiny-imagenet-200/classes.txt gives it); per task a fixed random
80/20 split of the training images into train/validation; the labelled validation images are the test set.

Only the data protocol is here: De Lange et al.'s VGG-style models are not built, so runs use the CIFAR
network (on 64×64 inputs) unless a user supplies another model through the library.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.tiny_imagenet import load_tiny_imagenet
from .base import Split, check_evaluate_on, check_task_count, derive_seed
from .split import SplitBenchmark, TaskData

TASKS, CLASSES_PER_TASK, VALIDATION = 20, 10, 0.2


def tiny_imagenet_tasks(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                        count: int, evaluate_on: str) -> list[TaskData]:
    """Task t holds classes 10t..10t+9 (labels relabelled 0..9); its validation split is fixed (seed 0)."""
    check_evaluate_on(evaluate_on)
    tasks = []
    for t in range(count):
        low = CLASSES_PER_TASK * t
        train_index = np.flatnonzero((y_train >= low) & (y_train < low + CLASSES_PER_TASK))
        test_index = np.flatnonzero((y_test >= low) & (y_test < low + CLASSES_PER_TASK))
        order = np.random.default_rng(derive_seed(0, 6, t)).permutation(train_index)
        cut = len(order) - int(round(VALIDATION * len(order)))
        train = Split.from_images(x_train[order[:cut]], y_train[order[:cut]] - low, flatten=False)
        held = Split.from_images(x_train[order[cut:]], y_train[order[cut:]] - low, flatten=False)
        test = Split.from_images(x_test[test_index], y_test[test_index] - low, flatten=False)
        tasks.append(TaskData(train, held if evaluate_on == "validation" else test, CLASSES_PER_TASK, held))
    return tasks


def split_tiny_imagenet(num_tasks: int | None = None, evaluate_on: str = "test", data_dir: str | Path | None = None
                        ) -> SplitBenchmark:
    """The 20-task split of Tiny ImageNet (needs the download, about 240 MB, and Pillow to decode it once)."""
    count = check_task_count("split-tiny-imagenet", num_tasks, TASKS)
    data, _ = load_tiny_imagenet(data_dir)
    if data.y_train.max() + 1 < CLASSES_PER_TASK * count:
        raise ValueError(f"Tiny ImageNet here has {data.y_train.max() + 1} classes, too few for {count} tasks of 10")
    return SplitBenchmark("split-tiny-imagenet", tiny_imagenet_tasks(data.x_train, data.y_train, data.x_test,
                                                                     data.y_test, count, evaluate_on))
