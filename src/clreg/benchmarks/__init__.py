"""Task sequences: which data each task trains and is evaluated on (SPEC §5), and each benchmark's defaults."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from clreg.benchmarks.arrays import arrays_benchmark
from clreg.benchmarks.base import EVALUATE_ON, Split, check_evaluate_on, derive_seed
from clreg.benchmarks.permuted import PermutedBenchmark, permuted_digits, permuted_fashion_mnist, permuted_mnist
from clreg.benchmarks.split import SplitBenchmark, TaskData, split_cifar10, split_cifar10_100, split_mnist
from clreg.benchmarks.tiny_imagenet import split_tiny_imagenet

Benchmark = PermutedBenchmark | SplitBenchmark


GENERIC_C = 1.0  # c where no good value is known for a benchmark and method: choose one with `clreg sweep`


@dataclass(frozen=True)
class Defaults:
    """What a benchmark implies unless a run says otherwise: network and widths, epochs, batch size and
    learning rate, SI's ξ, n for post-task measures, and (c, re-init) per method where a good value is known."""

    network: str
    widths: tuple[int, ...]
    xi: float
    samples: int
    epochs: int = 20
    batch_size: int = 256
    lr: float | None = None  # None: 1e-3 · b / 256 (SPEC §5)
    methods: dict = field(default_factory=dict, hash=False)  # method → (c, re-init)

    def method(self, name: str) -> tuple[float, bool, bool]:
        """(c, re-init, known) for method `name`: the benchmark's value, else (GENERIC_C, off, False)."""
        if name in self.methods:
            return (*self.methods[name], True)
        return (0.0 if name == "finetune" else GENERIC_C), False, name == "finetune"


# the authors' chosen (c, re-init) per method (SPEC §5, the paper's appendix)
PMNIST_METHODS = {"si": (0.2, True), "siu": (2.0, True), "sib": (0.5, True), "sos": (1.0, True), "mas": (500.0, False),
                  "af": (200.0, False), "sqrt-fisher": (2.0, False), "fisher": (1000.0, False),
                  "mas-logits": (0.001, True), "finetune": (0.0, False)}
CIFAR_METHODS = {"si": (5.0, True), "siu": (2.0, False), "sib": (5.0, True), "sos": (500.0, True), "mas": (200.0, True),
                 "af": (1000.0, True), "sqrt-fisher": (10.0, True), "fisher": (5e4, True), "mas-logits": (0.1, True),
                 "finetune": (0.0, False)}
# tuned for `clreg demo` (5 tasks, 5 epochs, 200-200, b = 32, lr 1e-3)
DIGITS_METHODS = {"fisher": (100.0, False), "si": (30.0, False), "sos": (10.0, False), "mas": (10.0, False),
                  "finetune": (0.0, False)}
_MNIST = Defaults("mlp", (2000, 2000), 0.1, 1000, methods=PMNIST_METHODS)
_CIFAR = Defaults("cifar-cnn", (32, 64, 512), 1e-3, 500, epochs=60, lr=1e-3)  # lr not scaled with b (SPEC §5)
DEFAULTS = {"permuted-mnist": _MNIST, "permuted-fashion-mnist": Defaults("mlp", (2000, 2000), 0.1, 1000),
            "permuted-digits": Defaults("mlp", (200, 200), 0.1, 500, epochs=5, batch_size=32, lr=1e-3,
                                        methods=DIGITS_METHODS),
            "split-mnist": Defaults("mlp", (400, 400), 0.1, 1000),
            "split-cifar10-100": replace(_CIFAR, methods=CIFAR_METHODS),
            "split-cifar10": _CIFAR, "split-tiny-imagenet": _CIFAR,
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
                    split_classes: int | None = None, permute: int | None = None,
                    task_sizes: list[int] | None = None) -> Benchmark:
    """The benchmark registered under `name`, with its first `num_tasks` tasks (None: its default count);
    `task_sizes`: permuted benchmarks only, each task's number of training examples."""
    bench = _build(name, num_tasks, seed, evaluate_on, data_dir, trust_pickle, split_classes, permute)
    if task_sizes is not None:
        if not isinstance(bench, PermutedBenchmark):
            raise ValueError(f"task_sizes applies to permuted benchmarks (tasks of one image set), not {name}")
        bench.subsample(list(task_sizes), seed)
    return bench


def _build(name: str, num_tasks: int | None, seed: int, evaluate_on: str, data_dir: str | Path | None,
           trust_pickle: bool, split_classes: int | None, permute: int | None) -> Benchmark:
    check_name(name)
    check_evaluate_on(evaluate_on)
    if name.startswith("arrays:"):
        return arrays_benchmark(name[len("arrays:"):], num_tasks, seed, evaluate_on, split_classes, permute)
    if name == "split-tiny-imagenet" and not permute:
        return split_tiny_imagenet(num_tasks, evaluate_on, data_dir, split_classes)
    if split_classes or permute:
        raise ValueError("--split-classes applies to arrays:PATH and split-tiny-imagenet, --permute to arrays:PATH only")
    builders = {
        "permuted-mnist": lambda: permuted_mnist(num_tasks, seed, evaluate_on, data_dir),
        "permuted-fashion-mnist": lambda: permuted_fashion_mnist(num_tasks, seed, evaluate_on, data_dir),
        "permuted-digits": lambda: permuted_digits(num_tasks, seed, evaluate_on),
        "split-mnist": lambda: split_mnist(num_tasks, evaluate_on, data_dir),
        "split-cifar10": lambda: split_cifar10(num_tasks, evaluate_on, data_dir, trust_pickle),
        "split-cifar10-100": lambda: split_cifar10_100(num_tasks, evaluate_on, data_dir, trust_pickle),
    }
    return builders[name]()


__all__ = ["BENCHMARKS", "DEFAULTS", "EVALUATE_ON", "Benchmark", "PermutedBenchmark", "Split", "SplitBenchmark",
           "TaskData", "build_benchmark", "check_name", "defaults", "derive_seed", "permuted_digits",
           "permuted_fashion_mnist", "permuted_mnist", "split_cifar10", "split_cifar10_100", "split_mnist",
           "split_tiny_imagenet"]
