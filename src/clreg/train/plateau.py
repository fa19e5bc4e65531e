"""The learning-rate schedule driven by validation accuracy (De Lange et al. 2019's protocol): after every
epoch, the accuracy on the task's validation split; the rate × γ once `patience` epochs have not improved
on the best; the task stops once more than `stop` epochs have not; the best epoch's weights are restored
before the task's importance is measured."""
from __future__ import annotations

from clreg.train.callbacks import Callback
from clreg.train.evaluation import evaluate


class Plateau(Callback):
    """`lr_schedule: plateau`; added by the Trainer. `stop` = 0: never stop early."""

    def __init__(self, gamma: float, patience: int, stop: int):
        self.gamma, self.patience, self.stop = gamma, patience, stop
        self.per_epoch, self.best, self.bad, self.best_state, self.last_step = 1, -1.0, 0, None, 0
        self.history: list[dict] = []  # per task: epochs trained, best validation accuracy, its epoch

    def on_run_start(self, trainer) -> None:  # noqa: D102
        if not getattr(trainer.bench, "has_validation", False):
            raise ValueError(f"lr_schedule plateau needs validation splits beside the test splits; {trainer.bench.name} "
                             "keeps none here (permuted-digits only with --eval validation)")

    def on_task_start(self, trainer, task: int, steps: int) -> None:  # noqa: D102
        self.per_epoch = trainer.steps_per_epoch(task)
        self.best, self.bad, self.best_state, self.best_epoch, self.last_step = -1.0, 0, None, 0, 0

    def on_step(self, trainer, step) -> None:  # noqa: D102
        self.last_step = step.task_step
        if step.task_step % self.per_epoch:
            return
        accuracy = evaluate(trainer.model, trainer.bench, step.task, split="validation")
        if accuracy > self.best:
            self.best, self.bad, self.best_epoch = accuracy, 0, step.task_step // self.per_epoch
            self.best_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
            return
        self.bad += 1
        if self.bad == self.patience:
            for group in trainer.optimizer.param_groups:
                group["lr"] *= self.gamma
        if self.stop and self.bad > self.stop:
            trainer.stop_task = True

    def on_train_end(self, trainer, task: int) -> None:  # noqa: D102
        if self.best_state is not None:
            trainer.model.load_state_dict(self.best_state)
        self.history.append({"task": task, "best_validation_accuracy": self.best, "best_epoch": self.best_epoch,
                             "epochs": self.last_step // self.per_epoch})
        self.best_state = None
