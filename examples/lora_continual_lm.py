"""Continual LoRA fine-tuning of a small causal language model with the Hugging Face Trainer: EWC against plain
LoRA fine-tuning on three generated "languages" (nothing is downloaded).

The model is a GPT-2 built from a config (2 layers, width 64, a 48-token vocabulary), its weights frozen; `peft`
adds rank-16 LoRA adapters to every attention and feed-forward projection (c_attn, c_proj, c_fc), and only the
adapters train. (The config's initializer_range is 0.1 rather than GPT-2's 0.02, a stand-in for pretrained
weights: with the frozen, tied embedding at 0.02 the logits stay too small to fit any language.) Each task is a
language with 16 tokens of its own: a Markov chain in which each token is followed by its successor (a random
permutation of the language's tokens) with probability 0.9, else by one of the language's tokens drawn
uniformly. Training on language 2 moves the adapters away from what language 1 needed; EWC's penalty on the
adapters keeps more of it (`ContinualRegularizer("fisher", ...)` regularises the model's trainable parameters:
here exactly the LoRA factors lora_A and lora_B; the frozen base has nothing to regularise).

What EWC measures at each task's end: the Fisher of each whole sequence, sampled (`fisher_mode="sampled"`, one
label drawn per token from the model's own next-token distribution, the estimator to use over a vocabulary), on
256 of the task's training sequences. `causal_lm=True` scores the logits `[:, :-1]` against the labels `[:, 1:]`,
the shift the model's own loss makes; a sample is a sequence, its 15 predictions' losses summed
(docs/algorithms.md §3, "Sequence models"). docs/integrations.md, "Large models", says which estimator to use
when.

    OMP_NUM_THREADS=1 python examples/lora_continual_lm.py    # needs: pip install 'clreg[transformers,peft]'

It prints language 1's held-out loss (nats per predicted token) after each task, and every language's after the
last, for both runs (about 40 s on one CPU thread).
"""
from __future__ import annotations

import math
import tempfile
import warnings

import torch
from peft import LoraConfig, get_peft_model
from torch.utils.data import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, PrinterCallback, Trainer, TrainingArguments
from transformers.utils import logging

from clreg.integrations.transformers import ContinualRegularizer

WORDS, LANGUAGES, LENGTH = 16, 3, 16  # tokens per language, languages (tasks), tokens per sequence
VOCAB = WORDS * LANGUAGES  # language k's tokens: k·WORDS .. (k + 1)·WORDS − 1
C = 2.0  # EWC's strength


class Language(Dataset):
    """`n` sequences of language `language` (0, 1, ...): a Markov chain over its own WORDS tokens in which token v
    is followed by successor[v] with probability `stay`, else by one of the language's tokens drawn uniformly.
    The language (its tokens and successor permutation) is fixed by `language`, the sequences by `seed`."""

    def __init__(self, language: int, n: int = 512, seed: int = 0, stay: float = 0.9):
        successor = torch.randperm(WORDS, generator=torch.Generator().manual_seed(1000 + language))
        g = torch.Generator().manual_seed(seed)
        words = torch.empty(n, LENGTH, dtype=torch.long)
        words[:, 0] = torch.randint(0, WORDS, (n,), generator=g)
        for t in range(1, LENGTH):
            follow = torch.rand(n, generator=g) < stay
            words[:, t] = torch.where(follow, successor[words[:, t - 1]], torch.randint(0, WORDS, (n,), generator=g))
        self.ids = words + WORDS * language

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.ids[i]}


def lora_gpt2(seed: int = 0, rank: int = 16):
    """A GPT-2 from a config, frozen, with LoRA adapters (rank `rank`, scale 2) on c_attn, c_proj and c_fc."""
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=64, n_layer=2, n_head=2, initializer_range=0.1,
                        bos_token_id=0, eos_token_id=0, pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    lora = LoraConfig(task_type="CAUSAL_LM", r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                      target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)  # GPT-2's Conv1D: (in, out)
    return get_peft_model(GPT2LMHeadModel(config), lora)


def train(model, data: Language, out: str, epochs: int, callbacks: list) -> None:
    args = TrainingArguments(output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=32, learning_rate=1e-2,
                             use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True,
                             optim="adamw_torch", weight_decay=0.0, lr_scheduler_type="constant", seed=0)
    trainer = Trainer(model, args, train_dataset=data, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # (it prints the run's metrics at the end)
    trainer.train()


def lm_loss(model, data: Language) -> float:
    """Mean next-token cross-entropy of `data` (nats per predicted token)."""
    model.eval()
    with torch.no_grad():
        return float(model(input_ids=data.ids, labels=data.ids).loss)


def run(method: str | None, c: float = 0.0, tasks: int = LANGUAGES, epochs: int = 10) -> list[list[float]]:
    """Languages 1..tasks in turn, LoRA fine-tuning with `method`'s penalty (None: plain). Row t: the held-out loss
    of each language after task t + 1."""
    model = lora_gpt2()
    callbacks = [] if method is None else [ContinualRegularizer(method, c, samples=256, causal_lm=True,
                                                                fisher_mode="sampled")]
    tests = [Language(k, n=256, seed=100 + k) for k in range(tasks)]
    losses = []
    with tempfile.TemporaryDirectory() as out:
        for task in range(tasks):
            data = Language(task, seed=task)
            train(model, data, out, epochs, callbacks)  # each train() ends its task on 256 training sequences
            losses.append([lm_loss(model, test) for test in tests])
    return losses


if __name__ == "__main__":
    logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)  # peft's call
    runs = {"plain LoRA": run(None), "LoRA + EWC": run("fisher", C)}
    print(f"held-out loss, nats per token (uniform over a language's tokens: {math.log(WORDS):.2f}; "
          f"over the vocabulary: {math.log(VOCAB):.2f})")
    after = [f"after task {t + 1}" for t in range(LANGUAGES)]
    print(f"{'':>11} | {'language 1':^39} | {'every language after task 3':^39}")
    print(f"{'':>11} | " + "".join(f"{a:>13}" for a in after) + " | " + "".join(f"{f'language {k + 1}':>13}"
                                                                               for k in range(LANGUAGES)))
    for name, losses in runs.items():
        print(f"{name:>11} | " + "".join(f"{row[0]:>13.3f}" for row in losses) + " | "
              + "".join(f"{loss:>13.3f}" for loss in losses[-1]))
