"""Continual fine-tuning of a transformer classifier with the Hugging Face Trainer: EWC against plain
fine-tuning on two text-classification tasks (generated token sequences, a tiny BERT built from a config:
nothing is downloaded). One classification head per task, not regularised; the encoder is shared.

    python examples/transformers_continual.py      # needs: pip install 'clreg[transformers]'
"""
from __future__ import annotations

import copy
import tempfile

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments
from transformers.utils import logging

from clreg.integrations.transformers import ContinualRegularizer


class Keyword(Dataset):
    """Sequences of random tokens; label 1 where the task's keyword token was put in (half of them)."""

    def __init__(self, keyword: int, n: int = 256, seed: int = 0, length: int = 8):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, 40, (n, length), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)
        position = torch.randint(0, length, (n,), generator=g)
        rows = self.labels == 1
        self.ids[rows, position[rows]] = keyword

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def tiny_bert(seed: int = 0, hidden: int = 32, dropout: float = 0.0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=40, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=16, num_labels=2,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    model = BertForSequenceClassification(config)
    # the Trainer divides an accumulated loss by the step count only for models that take no loss kwargs; a
    # BERT classifier takes them but does not use them, so without this its micro-batch gradients add up
    model.accepts_loss_kwargs = False
    return model


def arguments(out: str, epochs: int = 6, **extra) -> TrainingArguments:
    settings = dict(output_dir=str(out), num_train_epochs=epochs, per_device_train_batch_size=16, learning_rate=2e-3,
                    use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True,
                    optim="adamw_torch", lr_scheduler_type="constant", seed=0, max_grad_norm=1.0)
    settings.update(extra)
    return TrainingArguments(**settings)


def task_loss(model, data: Keyword, head: dict) -> float:
    """Cross-entropy of `data` through the task's own classification head."""
    model.eval()
    now = copy.deepcopy(model.classifier.state_dict())
    model.classifier.load_state_dict(head)
    with torch.no_grad():
        logits = model(input_ids=data.ids, attention_mask=torch.ones_like(data.ids)).logits
    model.classifier.load_state_dict(now)
    return float(F.cross_entropy(logits, data.labels))


def run(method: str, c: float, seed: int = 1, epochs: int = 6) -> dict:
    """Task 1 (keyword 3), then task 2 (keyword 4) with a new head: the test losses through each task's head."""
    model = tiny_bert(seed)
    callback = ContinualRegularizer(method, c, heads=("classifier",), samples=256)
    first, second = (Keyword(3, seed=1), Keyword(3, seed=2)), (Keyword(4, seed=3), Keyword(4, seed=4))
    with tempfile.TemporaryDirectory() as out:
        Trainer(model, arguments(out, epochs), train_dataset=first[0], callbacks=[callback]).train()
        head = copy.deepcopy(model.classifier.state_dict())
        before = task_loss(model, first[1], head)
        model.classifier.reset_parameters()  # task 2's own head
        Trainer(model, arguments(out, epochs), train_dataset=second[0], callbacks=[callback]).train()
    return {"task 1 before": before, "task 1 after": task_loss(model, first[1], head),
            "task 2": task_loss(model, second[1], model.classifier.state_dict())}


if __name__ == "__main__":
    logging.set_verbosity_error()
    # EWC's c is large here: the Fisher of a model this sure of its answers is tiny (Ω sums to about 1e-4)
    for method, c in (("finetune", 0.0), ("fisher", 1e8)):
        losses = run(method, c)
        print(f"{method:>9} c={c:<6g} test loss  " + "  ".join(f"{k}: {v:.4f}" for k, v in losses.items()))
