"""docs/algorithms.md §9, figures 1–2: every importance measure on one training run, compared parameter by parameter.

Along the trajectory of one run (SI by default, the paper's setting) the path integrals of SI, SIU and SIB
and SOS's second moments (α = 0 and 1) are accumulated side by side; after each task the sensitivity
measures are computed on one shared sample. Per task: the Pearson correlation matrix over all shared
parameters (streamed, never all measures in float64 at once) and a seeded sample of positions for scatter plots.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from clreg import importance
from clreg.benchmarks import derive_seed
from clreg.importance import TaskSample
from clreg.importance.trajectory import SecondOrderSynapses, path_importance
from clreg.models.build import task_forward
from clreg.analysis.probe import Probe
from clreg.analysis.stats import ScatterSample, StreamingCorrelation, slope_through_origin

PATH_MEASURES = ("si", "siu", "sib")  # g_t, g'_t, g_t − g'_t in the path integral
SENSITIVITY = ("fisher", "sqrt-fisher", "af", "mas", "masx", "mas-logits", "masx-logits")
SIZE_DEPENDENT = ("fisher", "af")  # also measured on the large sample, if one is asked for
PAIRS = (("si", "sos"), ("siu", "sos"), ("sib", "sos"), ("mas", "sqrt-fisher"), ("mas", "masx"), ("mas", "af"))


def measure_names(large_samples: int | None = None) -> list[str]:
    """Every measure the analysis computes, in its order."""
    paths = [f"{name}{variant}" for name in PATH_MEASURES for variant in ("", "-noclip", "-raw", "-raw-noclip")]
    large = [f"{name}@{large_samples}" for name in SIZE_DEPENDENT] if large_samples else []
    return [*paths, "sos", "sos-a1", *SENSITIVITY, *large]


def parse_pairs(text: str, large_samples: int | None = None) -> tuple[tuple[str, str], ...]:
    """'si:sos,mas:af' → (("si", "sos"), ("mas", "af")), every name checked."""
    names = measure_names(large_samples)
    pairs = tuple(tuple(part.split(":")) for part in text.split(",") if part)
    bad = [":".join(p) for p in pairs if len(p) != 2 or not set(p) <= set(names)]
    if bad or not pairs:
        raise ValueError(f"pairs must be NAME:NAME separated by commas, NAME one of {', '.join(names)}; "
                         f"got {', '.join(bad) or repr(text)}")
    return pairs


def path_variants(name: str, path: list[Tensor], start: list[Tensor], params: list[Tensor], xi: float
                  ) -> dict[str, list[Tensor]]:
    """docs/algorithms.md §2's SI-type importance and its variants from one path integral s: `name` (rescaled by
    (θ_end − θ_start)² + ξ, clipped at 0: the method), `-noclip`, `-raw` (s clipped), `-raw-noclip` (s)."""
    return {f"{name}{suffix}": path_importance(path, start, params, xi, rescale, clip)
            for suffix, rescale, clip in (("", True, True), ("-noclip", True, False), ("-raw", False, True),
                                          ("-raw-noclip", False, False))}


class MeasuresProbe(Probe):
    """Accumulates every measure side by side and, per task, correlates them and samples them for scatters."""

    def __init__(self, xi: float, samples: int, large_samples: int | None = None,
                 scatter_points: int = 100_000, seed: int = 0, pairs: tuple[tuple[str, str], ...] = PAIRS):
        self.xi, self.samples, self.large = xi, samples, large_samples
        self.scatter_points, self.seed, self.pairs = scatter_points, seed, pairs
        self.paths = {name: importance.create(name, xi=xi) for name in PATH_MEASURES}
        self.sos = {"sos": SecondOrderSynapses(alpha=0.0), "sos-a1": SecondOrderSynapses(alpha=1.0)}
        self.tasks: list[dict] = []
        self.scatter: dict[int, dict[str, np.ndarray]] = {}  # by task: the first task's and the latest's

    def task_started(self, trainer, task) -> None:  # noqa: D102
        for measure in [*self.paths.values(), *self.sos.values()]:
            measure.begin_task(trainer.reg.params)

    def stepped(self, trainer, grads, independent, delta) -> None:  # noqa: D102
        shared = len(trainer.reg.params)  # importance is measured for the regularised parameters only
        for measure in [*self.paths.values(), *self.sos.values()]:
            measure.accumulate(grads[:shared], independent[:shared], delta[:shared])

    def task_ended(self, trainer, task) -> None:  # noqa: D102
        values = self.importances(trainer, task)
        names = list(values)
        correlation = StreamingCorrelation(names)
        for i in range(len(trainer.reg.params)):
            correlation.update([values[name][i] for name in names])
        sample = ScatterSample([p.numel() for p in trainer.reg.params], self.scatter_points,
                               derive_seed(self.seed, 7, task))
        points = {name: sample.take(values[name]) for name in names}
        slopes = {f"{a} vs {b}": slope_through_origin(points[a], points[b]) for a, b in self.pairs}
        totals = {name: float(sum(float(v.double().sum()) for v in values[name])) for name in names}
        matrix = correlation.as_dict()
        self.tasks.append({"task": task, "measures": names, "correlation": matrix,
                           "pairs": {f"{a} vs {b}": matrix[a][b] for a, b in self.pairs},
                           "slope_through_origin": slopes, "sums": totals, "parameters": correlation.n})
        kept = min(self.scatter, default=task)  # the first task this run recorded, and the latest
        self.scatter = {t: v for t, v in self.scatter.items() if t == kept} | {task: points}

    def state_dict(self) -> dict:  # noqa: D102
        return {"tasks": self.tasks, "scatter": {t: {name: torch.from_numpy(v) for name, v in points.items()}
                                                 for t, points in self.scatter.items()}}

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        self.tasks = state["tasks"]
        self.scatter = {t: {name: v.numpy() for name, v in points.items()} for t, points in state["scatter"].items()}

    def load_records(self, data: dict) -> None:  # noqa: D102
        self.tasks = list(data["tasks"])  # their scatter samples stay with the earlier part

    def importances(self, trainer, task: int) -> dict[str, list[Tensor]]:
        """ω of every measure for the task just trained, at θ_end."""
        params = trainer.reg.params
        values: dict[str, list[Tensor]] = {}
        for name, measure in self.paths.items():
            values.update(path_variants(name, measure.state, measure.start, params, self.xi))
        for name, measure in self.sos.items():
            values[name] = measure.task_importance(params, None)
        forward = task_forward(trainer.model, task)
        sizes = [(self.samples, "")] + ([(self.large, f"@{self.large}")] if self.large else [])
        for n, suffix in sizes:
            inputs, labels = trainer.bench.batch(task, self._sample(trainer, task, n))
            sample = TaskSample(trainer.model, inputs, labels, forward, trainer.reg.memory_budget)
            for name in SENSITIVITY if not suffix else SIZE_DEPENDENT:
                values[name + suffix] = importance.create(name).task_importance(params, sample)
        return values

    def _sample(self, trainer, task: int, n: int) -> Tensor:
        """n seeded training indices of `task` (drawn on the CPU for reproducibility), on the data's device."""
        size = trainer.bench.train_size(task)
        if n > size:
            raise ValueError(f"task {task + 1} has {size} training examples, fewer than the {n} samples asked for")
        generator = torch.Generator().manual_seed(derive_seed(self.seed, 8, task))
        return torch.randperm(size, generator=generator)[:n].to(trainer.bench.device)
