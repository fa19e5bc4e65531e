"""Task sequences: which data each task trains and is evaluated on (SPEC §5), and each benchmark's defaults."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .arrays import arrays_benchmark
from .base import EVALUATE_ON, Split, check_evaluate_on, derive_seed
from .permuted import PermutedBenchmark, permuted_digits, permuted_fashion_mnist, permuted_mnist
from .split import SplitBenchmark, TaskData, split_cifar10, split_cifar10_100, split_mnist
from .tiny_imagenet import split_tiny_imagenet

Benchmark = PermutedBenchmark | SplitBenchmark


@dataclass(frozen=True)
class Defaults:
    """What a benchmark implies unless a run says otherwise: network, its widths, SI's ξ, n for post-task measures."""

    network: str
    widths: tuple[int, ...]
    xi: float
    samples: int


_MNIST = Defaults("mlp", (2000, 2000), 0.1, 1000)
_CIFAR = Defaults("cifar-cnn", (32, 64, 512), 1e-3, 500)
DEFAULTS = {"permuted-mnist": _MNIST, "permuted-fashion-mnist": _MNIST,
            "permuted-digits": Defaults("mlp", (2000, 2000), 0.1, 500),
            "split-mnist": Defaults("mlp", (400, 400), 0.1, 1000),
            "split-cifar10-100": _CIFAR, "split-cifar10": _CIFAR, "split-tiny-imagenet": _CIFAR,
            "arrays:PATH": Defaults("mlp", (400, 400), 0.1, 500)}
BENCHMARKS = tuple(DEFAULTS)


def defaults(name: str) -> Defaults:
    """The defaults of benchmark `name` (any `arrays:...` shares those of arrays:PATH)."""
    check_name(name)
    return DEFAULTS["arrays:PATH" if name.startswith("arrays:") else name]


def check_name(name: str) -> None:
    """Raise ValueError unless `name` is a registered benchmark or arrays:PATH."""
    if name.startswith("arrays:"):
        if name == "arrays:":
            raise ValueError("arrays:PATH needs the path of a .npz file after the colon, e.g. arrays:data/mine.npz")
        return
    if name not in DEFAULTS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of: {', '.join(BENCHMARKS)}")


def build_benchmark(name: str, num_tasks: int | None, seed: int, evaluate_on: str = "test",
                    data_dir: str | Path | None = None, *, trust_pickle: bool = False,
                    split_classes: int | None = None, permute: int | None = None) -> Benchmark:
    """The benchmark registered under `name`, with its first `num_tasks` tasks (None: its default count)."""
    check_name(name)
    check_evaluate_on(evaluate_on)
    if name.startswith("arrays:"):
        return arrays_benchmark(name[len("arrays:"):], num_tasks, seed, evaluate_on, split_classes, permute)
    if split_classes or permute:
        raise ValueError("--split-classes and --permute apply to arrays:PATH benchmarks only")
    builders = {
        "permuted-mnist": lambda: permuted_mnist(num_tasks, seed, evaluate_on, data_dir),
        "permuted-fashion-mnist": lambda: permuted_fashion_mnist(num_tasks, seed, evaluate_on, data_dir),
        "permuted-digits": lambda: permuted_digits(num_tasks, seed, evaluate_on),
        "split-mnist": lambda: split_mnist(num_tasks, evaluate_on, data_dir),
        "split-cifar10": lambda: split_cifar10(num_tasks, evaluate_on, data_dir, trust_pickle),
        "split-cifar10-100": lambda: split_cifar10_100(num_tasks, evaluate_on, data_dir, trust_pickle),
        "split-tiny-imagenet": lambda: split_tiny_imagenet(num_tasks, evaluate_on, data_dir),
    }
    return builders[name]()


__all__ = ["BENCHMARKS", "DEFAULTS", "EVALUATE_ON", "Benchmark", "PermutedBenchmark", "Split", "SplitBenchmark",
           "TaskData", "build_benchmark", "check_name", "defaults", "derive_seed", "permuted_digits",
           "permuted_fashion_mnist", "permuted_mnist", "split_cifar10", "split_cifar10_100", "split_mnist",
           "split_tiny_imagenet"]
