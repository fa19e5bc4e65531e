"""Task sequences: which data each task trains and is evaluated on (docs/algorithms.md §6), and each benchmark's
defaults. Each benchmark is one file that registers itself (clreg.benchmarks.registry); everything here is derived
from the registry."""
from __future__ import annotations

from pathlib import Path

from clreg.benchmarks import permuted, split, tiny_imagenet, arrays  # noqa: F401 (each registers its benchmarks, in this order)
from clreg.benchmarks.arrays import arrays_benchmark
from clreg.benchmarks.base import EVALUATE_ON, GENERIC_C, Benchmark, Defaults, Split, check_evaluate_on, derive_seed
from clreg.benchmarks.permuted import PermutedBenchmark, permuted_digits, permuted_fashion_mnist, permuted_mnist
from clreg.benchmarks.registry import ENTRIES, Request, build, lookup
from clreg.benchmarks.split import SplitBenchmark, TaskData, split_cifar10, split_cifar10_100, split_mnist
from clreg.benchmarks.tiny_imagenet import split_tiny_imagenet

DEFAULTS = {name: entry.defaults for name, entry in ENTRIES.items()}
BENCHMARKS = tuple(ENTRIES)


def defaults(name: str) -> Defaults:
    """The defaults of benchmark `name` (any `arrays:...` shares those of arrays:PATH)."""
    return lookup(name).defaults


def check_name(name: str) -> None:
    """Raise ValueError unless `name` is a registered benchmark (or one of a registered family, arrays:PATH)."""
    lookup(name)


def build_benchmark(name: str, num_tasks: int | None, seed: int, evaluate_on: str = "test",
                    data_dir: str | Path | None = None, *, trust_pickle: bool = False,
                    split_classes: int | None = None, permute: int | None = None,
                    task_sizes: list[int] | None = None) -> Benchmark:
    """The benchmark registered under `name`, with its first `num_tasks` tasks (None: its default count);
    `task_sizes`: permuted benchmarks only, each task's number of training examples."""
    return build(name, Request(num_tasks, seed, evaluate_on, data_dir, split_classes, permute, task_sizes, trust_pickle))


__all__ = ["BENCHMARKS", "DEFAULTS", "EVALUATE_ON", "GENERIC_C", "Benchmark", "Defaults", "PermutedBenchmark",
           "Split", "SplitBenchmark", "TaskData", "arrays_benchmark", "build_benchmark", "check_evaluate_on",
           "check_name", "defaults", "derive_seed", "permuted_digits", "permuted_fashion_mnist", "permuted_mnist",
           "split_cifar10", "split_cifar10_100", "split_mnist", "split_tiny_imagenet"]
