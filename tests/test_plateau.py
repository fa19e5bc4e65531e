"""lr_schedule plateau (De Lange et al.'s protocol) against a scripted validation-accuracy sequence: the rate
decays after `patience` epochs without improvement, the task stops after more than `stop` such epochs, and
the best epoch's weights are the ones consolidated."""
import numpy as np
import pytest
import torch

import clreg.train.loop
import clreg.train.plateau
from clreg.train.callbacks import Callback
from clreg.train.config import RunConfig
from clreg.train.loop import Trainer, load_benchmark

# epoch:      1    2    3    4    5    6    7    8    9   10   11   12   13   14   15   16
SCRIPT = [0.50, 0.60, 0.70, 0.65, 0.69, 0.70, 0.60, 0.68, 0.66, 0.62, 0.61, 0.60, 0.69, 0.70, 0.64, 0.90]


class Witness(Callback):
    def __init__(self):
        self.epoch_lr, self.epoch_weights, self.consolidated = [], [], None

    def on_step(self, trainer, step):
        if step.task_step % trainer.plateau.per_epoch == 0:
            self.epoch_lr.append(trainer.optimizer.param_groups[0]["lr"])
            self.epoch_weights.append([p.detach().clone() for p in trainer.model.parameters()])

    def on_train_end(self, trainer, task):
        self.consolidated = [p.detach().clone() for p in trainer.model.parameters()]


def test_plateau_decays_stops_and_keeps_the_best_epoch(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=rng.integers(0, 255, (200, 6), dtype=np.uint8), y_train=np.arange(200) % 2,
             x_test=rng.integers(0, 255, (40, 6), dtype=np.uint8), y_test=np.arange(40) % 2)
    config = RunConfig(benchmark=f"arrays:{path}", split_classes=2, tasks=1, epochs=30, batch_size=30, hidden=[8],
                       method="si", c=1.0, lr=0.01, lr_schedule="plateau", lr_patience=3, stop_patience=5,
                       lr_gamma=0.5, device="cpu")
    scripted = iter(SCRIPT)
    def evaluate(model, bench, task, split="evaluation"):
        return next(scripted) if split == "validation" else 0.5

    for module in (clreg.train.loop, clreg.train.plateau):  # each evaluates through its own import
        monkeypatch.setattr(module, "evaluate", evaluate)
    witness = Witness()
    trainer = Trainer(config, load_benchmark(config), progress=False, callbacks=[witness])
    trainer.train_task(0)
    # best 0.70 at epoch 3 (epoch 6 and 14 only equal it); bad epochs 4, 5, 6 -> decay after epoch 6;
    # bad epochs continue to 9 (6 > 5): stop after epoch 9
    assert len(witness.epoch_lr) == 9
    assert witness.epoch_lr == [0.01] * 5 + [0.005] * 4
    assert trainer.plateau.history == [{"task": 0, "best_validation_accuracy": 0.70, "best_epoch": 3, "epochs": 9}]
    for a, b in zip(witness.consolidated, witness.epoch_weights[2]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_plateau_needs_validation_splits():
    config = RunConfig(benchmark="permuted-digits", tasks=1, lr_schedule="plateau", device="cpu")
    with pytest.raises(ValueError, match="lr_schedule plateau needs validation splits"):
        Trainer(config, load_benchmark(config), progress=False)
