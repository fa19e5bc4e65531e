"""De Lange et al. (2019)'s continual hyperparameter framework: each task's learning rate and penalty
strength are chosen on that task's validation split while the tasks arrive (no look at earlier or later
tasks' data), the protocol behind the paper's Tiny ImageNet table.

For each task t, from the state the previous task left (model, penalty, random generators):

1. Maximal plasticity search: the task is trained without the penalty once per learning rate of the grid
   (task 1: its own grid, usually wider), each time from that same state. The best validation accuracy
   A* and its rate lr* are kept; the fine-tuned models are discarded.
2. Stability decay: the task is trained at lr* with the penalty at strength s (s·R(θ); s = 1 at first).
   If its validation accuracy is below (1 − p)·A*, s ← α·s and the task is trained again from the same
   state, at most `attempts` times in all; the last attempt is kept when none passes. s carries over to the
   next task, as in their code, so a strength once lowered stays low.

Where the penalty is not in force (task 1 without a prior), phase 2 trains the best plain run once more
(a measure's statistics along the way, SI's path integral, are not kept between attempts) and accepts it.
Every attempt is real training: callbacks see each one (on_task_start … on_train_end), and the result's
`search` lists them with their steps.
"""
from __future__ import annotations

import copy

from clreg.core.options import Option, SettingError, positive_floats
from clreg.train.evaluation import evaluate
from clreg.train.guard import Diverged

OPTIONS = (
    Option("lr_search", positive_floats("0.01,0.005,0.001"), None, "De Lange et al.'s per-task search: learning "
           "rates tried on each task without the penalty; the best on validation trains the task, whose penalty "
           "strength is then halved until it keeps (1 - stability-margin) of that accuracy", key_when_default=False,
           default_text="off"),
    Option("lr_search_first", positive_floats("0.1,0.05,0.01"), None, "lr-search: the rates tried on task 1",
           key_when_default=False, default_text="lr-search's"),
    Option("stability_margin", float, 0.2, "lr-search: the accepted drop p of validation accuracy below the "
           "best plain run", minimum=0.0, maximum=1.0, key_when_default=False),
    Option("stability_decay", float, 0.5, "lr-search: the penalty strength's factor after an attempt that lost "
           "more than the margin", minimum=0.0, above=True, maximum=1.0, key_when_default=False),
    Option("stability_attempts", int, 10, "lr-search: attempts per task at most (the last one is kept)",
           minimum=1, key_when_default=False),
)
DEFAULTS = {option.name: option.default for option in OPTIONS}


def check(settings: dict) -> None:
    """Raise ValueError for a search setting given without lr_search, and for lr_search with a fixed lr."""
    if settings["lr_search"] is None:
        given = [option for option in OPTIONS if option.name != "lr_search" and settings[option.name] != option.default]
        if given:
            names = ", ".join(f"{{{i}}}" for i in range(len(given)))
            raise SettingError(names + f" {'applies' if len(given) == 1 else 'apply'} to {{{len(given)}}} only, "
                               "which is off", *given, OPTIONS[0])
        return
    if settings["lr"] is not None:
        raise SettingError("{0} chooses each task's learning rate: leave {1} unset, or drop {0}", OPTIONS[0], "lr")


class TaskSearch:
    """Trains one task the framework's way (see the module doc); `history` holds one record per task."""

    def __init__(self, grid: list[float], first_grid: list[float] | None = None, margin: float = 0.2,
                 decay: float = 0.5, attempts: int = 10):
        self.grid, self.first_grid = list(grid), list(first_grid or grid)
        self.margin, self.decay, self.attempts = margin, decay, attempts
        self.history: list[dict] = []
        self.failure: Exception | None = None  # the last attempt's divergence

    @classmethod
    def from_config(cls, config) -> "TaskSearch | None":
        """The search a run config asks for; None when lr_search is off."""
        if config.lr_search is None:
            return None
        return cls(config.lr_search, config.lr_search_first, config.stability_margin, config.stability_decay,
                   config.stability_attempts)

    def check(self, trainer) -> None:
        """ValueError unless the benchmark keeps validation splits (the search is scored on them)."""
        if not getattr(trainer.bench, "has_validation", False):
            raise ValueError(f"lr_search is scored on validation splits; {trainer.bench.name} keeps none here "
                             "(permuted-digits only with --eval validation)")

    def train(self, trainer, task: int) -> None:
        """Train `task` through both phases, then consolidate it with the accepted attempt's weights. An
        attempt whose loss diverges scores nothing (phase 1) or fails the margin (phase 2); Diverged is raised
        only when no attempt is left to keep."""
        start = copy.deepcopy(trainer.training_state())
        strength = trainer.reg.strength
        record = {"task": task, "plain": [], "attempts": []}
        best = None
        for lr in (self.first_grid if task == 0 else self.grid):
            trainer.load_training_state(start)
            trainer.reg.strength = 0.0
            accuracy = self._attempt(trainer, task, lr, record["plain"])
            if accuracy is not None and (best is None or accuracy > best):
                best, record["lr"] = accuracy, lr
        if best is None:
            raise self.failure
        record["reference"] = best
        for attempt in range(self.attempts):
            trainer.load_training_state(start)
            trainer.reg.strength = strength
            accuracy = self._attempt(trainer, task, record["lr"], record["attempts"])
            if accuracy is not None and accuracy >= (1 - self.margin) * best:
                break
            if accuracy is None and attempt == self.attempts - 1:
                raise self.failure
            strength *= self.decay  # also after the last attempt, as in their code
        record["strength"] = trainer.reg.strength
        self.history.append(record)
        trainer.reg.strength = strength  # what the next task starts from
        trainer.finish_task(task)

    def _attempt(self, trainer, task: int, lr: float, into: list) -> float | None:
        """Train `task` at `lr` from the current state; its validation accuracy (None if the loss diverged),
        recorded in `into`."""
        first = trainer.steps_done + 1
        entry = {"lr": lr, "strength": trainer.reg.strength}
        try:
            trainer.fit_task(task, lr=lr)
        except Diverged as err:
            self.failure = err
            into.append({**entry, "validation_accuracy": None, "diverged": str(err),
                         "steps": [first, trainer.steps_done]})
            return None
        accuracy = evaluate(trainer.model, trainer.bench, task, split="validation")
        into.append({**entry, "validation_accuracy": accuracy, "steps": [first, trainer.steps_done]})
        return accuracy

    def state_dict(self) -> dict:
        """The records of the tasks searched so far (the strength itself lives in the penalty's state)."""
        return {"history": copy.deepcopy(self.history)}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict`."""
        self.history = copy.deepcopy(state["history"])
