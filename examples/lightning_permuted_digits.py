"""EWC and SOS in PyTorch Lightning on Permuted Digits (scikit-learn's 8×8 digits, no download): one
LightningModule, three tasks, one `Trainer.fit` per task, clreg's callback doing the rest.

    python examples/lightning_permuted_digits.py          # needs: pip install 'clreg[lightning]'
"""
from __future__ import annotations

import warnings

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clreg.benchmarks import build_benchmark
from clreg.integrations.lightning import ContinualRegularizer


class DigitClassifier(L.LightningModule):
    """A 64-200-200-10 MLP trained with Adam; nothing in it knows about continual learning."""

    def __init__(self, lr: float = 1e-3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def task_loaders(tasks: int = 3, seed: int = 0) -> tuple[list[DataLoader], list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per task, a shuffling training loader and the test set (the same digits, each task's own pixel order)."""
    bench = build_benchmark("permuted-digits", tasks, seed)
    generator = torch.Generator().manual_seed(seed)
    train = [DataLoader(TensorDataset(*bench.batch(t, torch.arange(bench.train_size(t)))), batch_size=32,
                        shuffle=True, generator=generator) for t in range(tasks)]
    test = [tuple(torch.cat(parts) for parts in zip(*bench.evaluation_batches(t))) for t in range(tasks)]
    return train, test


def run(method: str, c: float, tasks: int = 3, epochs: int = 5, seed: int = 0) -> list[list[float]]:
    """Train the tasks in turn; the accuracy matrix A[k][j] (after task k, on task j)."""
    L.seed_everything(seed, verbose=False)
    train, test = task_loaders(tasks, seed)
    module = DigitClassifier()
    callback = ContinualRegularizer(method, c, samples=500)  # EWC measures Fisher on 500 inputs per task
    matrix = []
    for loader in train:
        trainer = L.Trainer(max_epochs=epochs, callbacks=[callback], logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Lightning's advice to add dataloader workers
            trainer.fit(module, loader)
        with torch.no_grad():
            matrix.append([float((module(x).argmax(1) == y).float().mean()) for x, y in test])
    return matrix


if __name__ == "__main__":
    for method, c in (("finetune", 0.0), ("fisher", 100.0), ("sos", 10.0)):
        final = run(method, c)[-1]
        print(f"{method:>9} c={c:<6g} accuracy per task after the last: "
              + "  ".join(f"{100 * a:.1f}%" for a in final) + f"   average {100 * sum(final) / len(final):.1f}%")
