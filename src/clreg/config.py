"""One dataclass describes a run; it is validated before any data is loaded."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from . import importance
from .penalty import MODES
from .benchmarks import BENCHMARKS, EVALUATE_ON

# ξ of SI's rescaling per benchmark (SPEC §2), and the number of samples of post-task measures (§3)
DEFAULT_XI = {"permuted-mnist": 0.1, "permuted-digits": 0.1}
DEFAULT_SAMPLES = {"permuted-mnist": 1000, "permuted-digits": 500}
SI_FAMILY = ("si", "siu", "sib")
FISHER_FAMILY = ("fisher", "ewc", "sqrt-fisher", "af")


@dataclass
class RunConfig:
    """Everything that determines a run's numbers."""

    benchmark: str = "permuted-mnist"
    method: str = "si"
    c: float = 0.2
    reinit: bool = False
    tasks: int = 10
    epochs: int = 20
    batch_size: int = 256
    hidden: list[int] = field(default_factory=lambda: [2000, 2000])
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
    data_dir: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the bad value and what is allowed."""
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {self.benchmark!r}; choose one of: {', '.join(BENCHMARKS)}")
        if self.method not in importance.method_names():
            raise ValueError(f"unknown method {self.method!r}; choose one of: {', '.join(importance.method_names())}")
        checks = [(self.c >= 0, f"c must be >= 0, got {self.c}"),
                  (self.tasks >= 1, f"tasks must be >= 1, got {self.tasks}"),
                  (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
                  (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
                  (bool(self.hidden) and all(w >= 1 for w in self.hidden),
                   f"hidden widths must be positive integers, got {self.hidden}"),
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
                  (not self.revisit or self.tasks >= 2, "revisit needs at least 2 tasks"),
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
        """n for post-task measures."""
        return self.importance_samples or DEFAULT_SAMPLES[self.benchmark]

    def measure_options(self) -> dict:
        """Keyword arguments of the importance measure this config selects."""
        if self.method in SI_FAMILY:
            return {"xi": self.xi if self.xi is not None else DEFAULT_XI[self.benchmark]}
        if self.method == "sos":
            return {"alpha": self.sos_alpha, "bias_correction": self.sos_bias_correction,
                    "split": self.sos_split, "batch_size": self.batch_size}
        if self.method in FISHER_FAMILY:
            return {"mode": self.fisher_mode, "draws": self.fisher_draws, "seed": self.seed}
        return {}

    def to_dict(self) -> dict:
        """Plain data, with the derived learning rate and sample count filled in."""
        return {**asdict(self), "learning_rate": self.learning_rate, "samples": self.samples}
