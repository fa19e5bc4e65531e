"""One dataclass describes a run; it is validated before any data is loaded."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

from . import importance
from .benchmarks import EVALUATE_ON, check_name, defaults
from .device import check_device_name, check_precision
from .models import DEFAULT_WIDTHS, NETWORKS
from .penalty import MODES

SI_FAMILY = ("si", "siu", "sib")
FISHER_FAMILY = ("fisher", "ewc", "sqrt-fisher", "af")
# where the data is read from does not change the numbers; the device changes them only by rounding (README)
NOT_IN_KEY = ("data_dir", "trust_pickle", "device")
FLOAT_FIELDS = ("c", "lr", "xi", "prior", "decay")


@dataclass
class RunConfig:
    """Everything that determines a run's numbers."""

    benchmark: str = "permuted-mnist"
    method: str = "si"
    c: float = 0.2
    reinit: bool = False
    tasks: int | None = None  # None: all of the benchmark's tasks (10 for permuted benchmarks)
    epochs: int = 20
    batch_size: int = 256
    network: str | None = None  # None: the benchmark's (mlp, or cifar-cnn on CIFAR)
    hidden: list[int] | None = None  # None: the benchmark's widths (2000,2000 on P-MNIST; 32,64,512 for cifar-cnn)
    equal_iter: bool = False  # every task gets as many steps as the first (tasks 2-6 of split-cifar10-100: 10x epochs)
    seed: int = 0
    lr: float | None = None  # None: 1e-3 · b / 256
    evaluate_on: str = "test"
    importance_samples: int | None = None  # None: benchmark default (1000 on MNIST)
    xi: float | None = None  # None: benchmark default (0.1 on MNIST)
    sos_alpha: float | str = 0.0
    sos_bias_correction: bool = True
    sos_split: bool = False
    fisher_mode: str = "exact"
    fisher_draws: int = 1
    penalty: str = "online"  # online, separate or debiased (SPEC §4)
    prior: float = 0.0  # λ_prior
    decay: float = 1.0  # γ (online only)
    revisit: bool = False  # after the last task, drop task 1's penalty (debiased) and learn it again
    proxy_every: int = 0  # log per-task proxy losses every this many steps (0: off)
    proxy_samples: int = 500  # test samples per task for the measured loss increase
    split_classes: int | None = None  # arrays:PATH: tasks of this many consecutive classes
    permute: int | None = None  # arrays:PATH: this many permuted tasks
    trust_pickle: bool = False  # unpickle a CIFAR python-version file whose md5 is not the canonical one
    data_dir: str | None = None
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    precision: str = "fp32"  # fp32, tf32 (CUDA) or bf16 autocast

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the bad value and what is allowed."""
        check_name(self.benchmark)
        check_device_name(self.device)
        check_precision(self.precision)
        if self.method not in importance.method_names():
            raise ValueError(f"unknown method {self.method!r}; choose one of: {', '.join(importance.method_names())}")
        checks = [(self.c >= 0, f"c must be >= 0, got {self.c}"),
                  (self.tasks is None or self.tasks >= 1, f"tasks must be >= 1, got {self.tasks}"),
                  (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
                  (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
                  (self.hidden is None or (bool(self.hidden) and all(w >= 1 for w in self.hidden)),
                   f"hidden widths must be positive integers, got {self.hidden}"),
                  (self.network is None or self.network in NETWORKS,
                   f"network must be one of {', '.join(NETWORKS)}, got {self.network!r}"),
                  (self.network_name != "cifar-cnn" or len(self.widths) == 3,
                   f"the cifar-cnn network takes 3 widths (conv stage 1, conv stage 2, dense), got {self.widths}"),
                  (self.benchmark.startswith("arrays:") or (self.split_classes is None and self.permute is None),
                   "--split-classes and --permute apply to arrays:PATH benchmarks only"),
                  (self.split_classes is None or self.split_classes >= 1,
                   f"split-classes must be >= 1, got {self.split_classes}"),
                  (self.permute is None or self.permute >= 1, f"permute must be >= 1, got {self.permute}"),
                  (not (self.sos_split and self.network_name == "cifar-cnn"),
                   "sos split takes g and g' from the training pass, which has dropout on in the cifar-cnn "
                   "network; SPEC §2 wants them with dropout off: use --no-split (one extra pass per step)"),
                  (self.lr is None or self.lr > 0, f"lr must be > 0, got {self.lr}"),
                  (self.xi is None or self.xi > 0, f"xi must be > 0, got {self.xi}"),
                  (self.importance_samples is None or self.importance_samples >= 1,
                   f"importance samples must be >= 1, got {self.importance_samples}"),
                  (self.evaluate_on in EVALUATE_ON,
                   f"evaluate_on must be one of {', '.join(EVALUATE_ON)}, got {self.evaluate_on!r}"),
                  (not self.sos_split or self.batch_size >= 4, "sos split needs a batch size >= 4"),
                  (self.penalty in MODES, f"penalty must be one of {', '.join(MODES)}, got {self.penalty!r}"),
                  (self.prior >= 0, f"prior must be >= 0, got {self.prior}"),
                  (0 < self.decay <= 1, f"decay must be in (0, 1], got {self.decay}"),
                  (self.decay == 1 or self.penalty == "online",
                   f"decay (gamma) applies to the online penalty only, not {self.penalty!r}"),
                  (not self.revisit or self.penalty == "debiased",
                   "revisit drops a task's penalty, which needs penalty 'debiased'"),
                  (not self.revisit or self.tasks is None or self.tasks >= 2, "revisit needs at least 2 tasks"),
                  (self.proxy_every >= 0, f"proxy-every must be >= 0, got {self.proxy_every}"),
                  (self.proxy_samples >= 1, f"proxy samples must be >= 1, got {self.proxy_samples}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        importance.create(self.method, **self.measure_options())  # checks the measure's own options

    @property
    def learning_rate(self) -> float:
        """lr, or 1e-3 · b / 256 (SPEC §5)."""
        return self.lr if self.lr is not None else 1e-3 * self.batch_size / 256

    @property
    def samples(self) -> int:
        """n for post-task measures (1000 on MNIST, 500 on CIFAR)."""
        return self.importance_samples or defaults(self.benchmark).samples

    @property
    def damping(self) -> float:
        """SI's ξ: as given, else the benchmark's (0.1 on MNIST, 1e-3 on CIFAR)."""
        return self.xi if self.xi is not None else defaults(self.benchmark).xi

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

    def measure_options(self) -> dict:
        """Keyword arguments of the importance measure this config selects."""
        if self.method in SI_FAMILY:
            return {"xi": self.damping}
        if self.method == "sos":
            return {"alpha": self.sos_alpha, "bias_correction": self.sos_bias_correction,
                    "split": self.sos_split, "batch_size": self.batch_size}
        if self.method in FISHER_FAMILY:
            return {"mode": self.fisher_mode, "draws": self.fisher_draws, "seed": self.seed}
        return {}

    def to_dict(self) -> dict:
        """Plain data, with the derived learning rate and sample count filled in."""
        return {**asdict(self), "network": self.network_name, "hidden": self.widths,
                "learning_rate": self.learning_rate, "samples": self.samples}

    def canonical(self) -> dict:
        """The fields that determine the run's numbers, defaults resolved and numbers normalised (1 and
        1.0 alike): what identifies a run in a results store and a checkpoint."""
        d = {k: v for k, v in asdict(self).items() if k not in NOT_IN_KEY}
        d.update(network=self.network_name, hidden=self.widths, lr=self.learning_rate, importance_samples=self.samples,
                 xi=self.damping)
        for name in FLOAT_FIELDS:
            d[name] = float(d[name])
        if d["sos_alpha"] != "auto":
            d["sos_alpha"] = float(d["sos_alpha"])
        return d

    def key(self) -> str:
        """SHA-256 of the canonical config: equal for configs that give the same numbers."""
        return hashlib.sha256(json.dumps(self.canonical(), sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: dict, **overrides) -> "RunConfig":
        """A config from plain data (a `canonical` or `to_dict` dict, a sweep file); unknown names are refused."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names - {"learning_rate", "samples"})
        if unknown:
            raise ValueError(f"unknown run setting(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(names))}")
        return cls(**{k: v for k, v in {**data, **overrides}.items() if k in names})
