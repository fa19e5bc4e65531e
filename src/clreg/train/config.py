"""One dataclass describes a run; it is validated before any data is loaded. Its fields are the declared
settings (clreg.core.options): the run's own below, the optimiser's and every importance measure's."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, field, make_dataclass
from pathlib import Path
from typing import Any

from clreg import importance

from clreg.train import optim

from clreg.train import task_search
from clreg.train.sizes import check_tasks
from clreg.benchmarks import BENCHMARKS, EVALUATE_ON, check_name, defaults
from clreg.benchmarks import registry as benchmark_registry
from clreg.core.device import PRECISIONS, check_device_name
from clreg.models.build import DEFAULT_WIDTHS, NETWORKS
from clreg.core.options import Option, SettingError, merge, positive_ints
from clreg.core.penalty import MODES
from clreg.regularizer import STORAGE


def _method(name: str) -> None:
    if name not in importance.method_names():
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(importance.method_names())}")


BENCHMARK_DEFAULT = "the benchmark's; see `clreg benchmarks`"
# the run's own settings; the optimiser's (clreg.train.optim) and each measure's (clreg.importance) follow them
RUN_OPTIONS = (
    Option("benchmark", str, "permuted-mnist", f"one of: {', '.join(BENCHMARKS)} (a .npz of your own: x_train, "
           "y_train, x_test, y_test)", check=check_name),
    Option("method", str, "si", "importance measure; see `clreg methods`", check=_method),
    Option("c", float, None, "regularisation strength c >= 0", minimum=0.0, default_text=BENCHMARK_DEFAULT),
    Option("reinit", bool, None, "re-draw shared weights at each task start", default_text=BENCHMARK_DEFAULT),
    Option("tasks", int, None, "the first N tasks", minimum=1, default_text="all; 10 for permuted benchmarks"),
    Option("epochs", int, None, "epochs per task", minimum=1, default_text=BENCHMARK_DEFAULT),
    Option("batch_size", int, None, "minibatch size b", minimum=1, default_text=BENCHMARK_DEFAULT),
    Option("network", str, None, f"one of: {', '.join(NETWORKS)}", choices=tuple(NETWORKS),
           default_text="the benchmark's"),
    Option("hidden", positive_ints("2000,2000"), None, "widths, comma-separated: MLP hidden layers, cifar-cnn's conv1,conv2,dense, or "
           "a VGG's two dense layers",
           default_text=BENCHMARK_DEFAULT),
    Option("equal_iter", bool, False, "every task as many steps as the first (split-cifar10-100: tasks 2-6 get "
           "10x epochs)"),
    Option("seed", int, 0, "random seed (data order, initialisation, permutations)", minimum=0, maximum=2 ** 63 - 1),
    Option("lr", float, None, "learning rate", minimum=0.0, above=True,
           default_text="the benchmark's, else 1e-3 * batch-size / 256"),
    Option("evaluate_on", str, "test", "split the accuracy is measured on", flag="--eval", choices=EVALUATE_ON),
    Option("importance_samples", int, None, "samples for post-task measures", flag="--samples", minimum=1,
           default_text="1000 on MNIST, 500 on CIFAR"),
    Option("penalty", str, "online", "combining tasks' penalties: online, separate or debiased", choices=MODES),
    Option("penalty_storage", str, "fp32", "online penalty: the dtype Omega and the anchors are kept in (bf16: half "
           "their memory; the step computes in fp32)", choices=tuple(STORAGE), key_when_default=False),
    Option("prior", float, 0.0, "Gaussian prior precision lambda_prior >= 0", minimum=0.0),
    Option("decay", float, 1.0, "online penalty: Omega <- decay * Omega + omega, decay in (0, 1]", minimum=0.0,
           above=True, maximum=1.0),
    Option("revisit", bool, False, "debiased: at the end, drop task 1's penalty and learn task 1 again"),
    Option("proxy_every", int, 0, "every N steps, log each earlier task's proxy loss and measured loss increase "
           "(0: off)", minimum=0),
    Option("proxy_samples", int, 500, "test samples per task for the measured loss increase", minimum=1),
    Option("split_classes", int, None, "arrays:PATH and split-tiny-imagenet: tasks of K consecutive classes "
           "(multi-head; Tiny ImageNet default 10, De Lange et al.'s code 20)", minimum=1),
    Option("task_sizes", positive_ints("1000,55000"), None, "permuted benchmarks: each task's training examples, one number per task, "
           "comma-separated (a fixed random subset; a task's epoch is its size)", key_when_default=False,
           default_text="all"),
    Option("permute", int, None, "arrays:PATH: T pixel-permuted tasks (one head)", minimum=1),
    Option("trust_pickle", bool, False, "unpickle CIFAR python-version files whose md5 is not the canonical one "
           "(unpickling can run code)", in_key=False),
    Option("data_dir", str, None, "directory containing mnist/, cifar10/, ...", in_key=False,
           default_text="$CLREG_DATA_DIR, the cache, a download"),
    # the device changes the numbers only by rounding (docs/gpu.md)
    Option("device", str, "auto", "auto (CUDA when available), cpu, cuda or cuda:N", check=check_device_name,
           in_key=False),
    Option("precision", str, "fp32", "fp32; tf32 (TensorFloat-32 matmuls, CUDA only); bf16 (autocast, float32 "
           "master weights)", choices=PRECISIONS, key_when_default=False),
)
OPTIONS = merge(RUN_OPTIONS, importance.settings(), optim.OPTIONS, task_search.OPTIONS)
BY_NAME = {option.name: option for option in OPTIONS}
NOT_IN_KEY = tuple(option.name for option in OPTIONS if not option.in_key)
REPLAYED = ("data_dir",)  # of NOT_IN_KEY, what a replay (--config RESULT.json) keeps: where the run read its data


class _RunConfig:
    """Everything that determines a run's numbers: one field per declared setting (`OPTIONS`)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check and normalise every setting, then their combinations; ValueError naming the bad value and
        what is allowed."""
        for option in OPTIONS:
            try:
                setattr(self, option.name, option.parse(getattr(self, option.name)))
            except ValueError as err:
                message = str(err)
                if not message.startswith("must"):
                    raise
                raise SettingError("{0} " + message.replace("{", "{{").replace("}", "}}"), option) from None
        check_tasks(self.tasks)  # before any data: the accuracy matrix is tasks x tasks
        self._resolve_benchmark_defaults()
        benchmark_registry.check_options(self.benchmark, {"permute": self.permute, "split_classes": self.split_classes,
                                                          "task_sizes": self.task_sizes})
        checks = [(self.network_name != "cifar-cnn" or len(self.widths) == 3,
                   f"the cifar-cnn network takes 3 widths (conv stage 1, conv stage 2, dense), got {self.widths}"),
                  (not self.network_name.startswith("vgg-") or len(self.widths) == 2,
                   f"the {self.network_name} network takes 2 widths (its two dense layers), got {self.widths}"),
                  (not (self.sos_split and self.network_name == "cifar-cnn"),
                   "sos split takes g and g' from the training pass, which has dropout on in the cifar-cnn "
                   "network; docs/algorithms.md §2 wants them with dropout off: use --no-split (one extra pass per step)"),
                  (not self.sos_split or self.batch_size >= 4, "sos split needs a batch size >= 4"),
                  (self.decay == 1 or self.penalty == "online",
                   f"decay (gamma) applies to the online penalty only, not {self.penalty!r}"),
                  (not self.revisit or self.penalty == "debiased",
                   "revisit drops a task's penalty, which needs penalty 'debiased'"),
                  (not self.revisit or self.tasks is None or self.tasks >= 2, "revisit needs at least 2 tasks")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        optim.check(self.optimizer_settings())
        task_search.check({name: getattr(self, name) for name in (*task_search.DEFAULTS, "lr")})
        importance.create(self.method, **self.measure_options())  # checks the measure's own options

    def _resolve_benchmark_defaults(self) -> None:
        """Settings left unset take the benchmark's value: epochs, batch size, and the method's c and re-init
        where a good value is known (clreg.benchmarks.DEFAULTS)."""
        bench = defaults(self.benchmark)
        c, reinit, _ = self.method_defaults()
        for name, value in (("c", c), ("reinit", reinit), ("epochs", bench.epochs), ("batch_size", bench.batch_size)):
            if getattr(self, name) is None:
                setattr(self, name, value)

    def method_defaults(self) -> tuple[float, bool, bool]:
        """(c, re-init, known) the benchmark gives this method (clreg.benchmarks.Defaults.method)."""
        return defaults(self.benchmark).method(importance.ALIASES.get(self.method, self.method))

    @property
    def learning_rate(self) -> float:
        """lr, else the benchmark's, else 1e-3 · b / 256 (docs/algorithms.md §5)."""
        if self.lr is not None:
            return self.lr
        bench_lr = defaults(self.benchmark).lr
        return bench_lr if bench_lr is not None else 1e-3 * self.batch_size / 256

    @property
    def samples(self) -> int:
        """n for post-task measures (1000 on MNIST, 500 on CIFAR)."""
        return self.importance_samples or defaults(self.benchmark).samples

    @property
    def damping(self) -> float:
        """SI's ξ: as given, else the benchmark's (0.1 on MNIST, 1e-3 on CIFAR)."""
        return self.resolved("xi")

    @property
    def network_name(self) -> str:
        """The network: as given, else the benchmark's."""
        return self.network or defaults(self.benchmark).network

    @property
    def widths(self) -> list[int]:
        """Hidden widths: as given, else the benchmark's for its network, else the network's."""
        if self.hidden is not None:
            return list(self.hidden)
        bench = defaults(self.benchmark)
        return list(bench.widths) if bench.network == self.network_name else list(DEFAULT_WIDTHS.get(self.network_name, []))

    def resolved(self, name: str):
        """Setting `name`: as given, else the benchmark's default for it (xi), else None."""
        value = getattr(self, name)
        return getattr(defaults(self.benchmark), name, None) if value is None else value

    def measure_options(self) -> dict:
        """Keyword arguments of the importance measure this config selects: its declared settings and the
        run settings it asks for."""
        cls = importance.measure_class(self.method)
        return {**{o.keyword: self.resolved(o.name) for o in cls.settings},
                **{name: getattr(self, name) for name in cls.from_run}}

    def optimizer_settings(self) -> dict:
        """The optimiser's and the schedule's settings by name (clreg.train.optim)."""
        return {option.name: getattr(self, option.name) for option in optim.OPTIONS}

    def to_dict(self) -> dict:
        """Plain data, with the derived learning rate and sample count filled in."""
        return {**asdict(self), "network": self.network_name, "hidden": self.widths,
                "learning_rate": self.learning_rate, "samples": self.samples}

    def canonical(self) -> dict:
        """The settings that determine the run's numbers, defaults resolved and numbers normalised (1 and
        1.0 alike): what identifies a run in a results store and a checkpoint. A setting declared with
        key_when_default=False (added after runs were stored) enters only when it differs from its default,
        so that runs stored before it existed keep their keys."""
        d = {o.name: o.key_value(getattr(self, o.name)) for o in OPTIONS
             if o.in_key and (o.key_when_default or getattr(self, o.name) != o.default)}
        d.update(network=self.network_name, hidden=self.widths, lr=self.learning_rate, importance_samples=self.samples,
                 xi=self.damping)
        return d

    def key(self) -> str:
        """SHA-256 of the canonical config: equal for configs that give the same numbers."""
        return hashlib.sha256(json.dumps(self.canonical(), sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: dict, **overrides) -> "RunConfig":
        """A config from plain data (a `canonical` or `to_dict` dict, a sweep file); unknown names are refused."""
        unknown = sorted(set(data) - set(BY_NAME) - {"learning_rate", "samples"})
        if unknown:
            raise ValueError(f"unknown run setting(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(BY_NAME))}")
        return cls(**{k: v for k, v in {**data, **overrides}.items() if k in BY_NAME})


RunConfig = make_dataclass("RunConfig", [(o.name, Any, field(default=o.default)) for o in OPTIONS], bases=(_RunConfig,))
RunConfig.__module__, RunConfig.__doc__ = __name__, _RunConfig.__doc__


def read_run_file(path: str | Path) -> dict:
    """The settings in a run file: a YAML (or JSON) mapping of setting → value, or a result written by
    `clreg run --out`, whose config replays the run (with the data directory it read, which --data-dir
    overrides; the device it used is left to this machine). ValueError naming the file and what is wrong."""
    from clreg.core.yamlfile import load_yaml

    data = load_yaml(path, "run file", "reading a run file (--config)")  # UTF-8, no key twice; ValueError naming the file
    if isinstance(data, dict) and isinstance(data.get("config"), dict) and "accuracy_matrix" in data:
        data = {k: v for k, v in data["config"].items() if k not in NOT_IN_KEY or k in REPLAYED}
    if not isinstance(data, dict):
        raise ValueError(f"run file {str(path)!r} must be a mapping of settings (setting: value), "
                         f"got {type(data).__name__}")
    unknown = sorted(set(data) - set(BY_NAME) - {"learning_rate", "samples"})
    if unknown:
        raise ValueError(f"run file {str(path)!r}: unknown setting(s) {', '.join(map(repr, unknown))}; "
                         f"allowed: {', '.join(sorted(BY_NAME))}")
    return {k: v for k, v in data.items() if k in BY_NAME}
