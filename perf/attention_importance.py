"""Post-task importance on transformers: clreg's engine against the naive per-sample loop, same run.

Two models, both with attention, whose parameters the per-layer closed forms only partly cover:
- `encoder`: token embedding + 2-layer nn.TransformerEncoder (d = 64, 4 heads, batch-first) + linear head.
  nn.MultiheadAttention applies its projections functionally, so their per-sample gradients come from
  torch.func (vmap of grad over the samples); the feed-forward Linears have closed forms.
- `bert`: a 2-layer BERT classifier (transformers' BertForSequenceClassification from a config, d = 64),
  keyword inputs. Its query/key/value/dense Linears have closed forms; its embeddings and LayerNorms cannot go
  through vmap (the model branches on its attention mask's values), so they are taken one sample at a time.

For each: exact Fisher (10 classes) and MAS on n sequences of 32 tokens, float32, after one warm-up; the naive
loop runs one forward per sample and one backward per label. The values agree (largest difference over the
largest value, printed). Attention's fused kernels have no vmap batching rule; the engine runs its math form.

    python perf/attention_importance.py --out perf/results/attention_importance.json
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F
from torch import nn

from clreg import importance
from clreg.importance import TaskSample

CLASSES, LENGTH, VOCAB = 10, 32, 100


class Encoder(nn.Module):
    def __init__(self, d=64):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, CLASSES)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)).mean(1))


def build(name):
    torch.manual_seed(0)
    ids = torch.randint(1, VOCAB, (4096, LENGTH))
    if name == "encoder":
        model = Encoder()
        return model, ids, None
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=256, max_position_embeddings=LENGTH, num_labels=CLASSES)
    model = BertForSequenceClassification(config)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return model, inputs, lambda x: model(**x).logits


def take(inputs, n):
    return {k: v[:n] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[:n]


def logits_of(model, forward, inputs, i):
    one = {k: v[i:i + 1] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[i:i + 1]
    return (forward or model)(one)[0]


def naive(measure, model, forward, params, inputs, n):
    total = [torch.zeros_like(p) for p in params]
    for i in range(n):
        z = logits_of(model, forward, inputs, i)
        if measure == "fisher":
            q, logq = z.softmax(0), F.log_softmax(z, 0)
            terms = [(q[y].detach(), -logq[y]) for y in range(CLASSES)]
        else:
            terms = [(1.0, z.softmax(0).square().sum())]
        for k, (w, objective) in enumerate(terms):
            grads = torch.autograd.grad(objective, params, retain_graph=k < len(terms) - 1)
            for t, g in zip(total, grads):
                t.add_(w * (g.square() if measure == "fisher" else g.abs()))
    return [t / n for t in total]


def engine(measure, model, forward, params, inputs, n):
    return importance.create(measure).task_importance(params, TaskSample(model, take(inputs, n), forward=forward))


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = []
    for name in ("encoder", "bert"):
        model, inputs, forward = build(name)
        model.eval()
        params = [p for p in model.parameters() if p.requires_grad]
        for measure in ("fisher", "mas"):
            engine(measure, model, forward, params, inputs, 4)  # warm-up
            fast, t_fast = timed(engine, measure, model, forward, params, inputs, args.samples)
            slow, t_slow = timed(naive, measure, model, forward, params, inputs, args.samples)
            # relative to the largest value of the measure (attention's key bias has an exactly zero gradient, so
            # its own values are rounding noise in both)
            error = max(float((f - s).abs().max()) for f, s in zip(fast, slow)) / max(float(s.detach().abs().max()) for s in slow)
            rows.append({"model": name, "measure": measure, "samples": args.samples, "engine_s": t_fast,
                         "naive_s": t_slow, "speedup": t_slow / t_fast, "max_relative_error": error})
            print(f"{name:8s} {measure:7s} n={args.samples}  engine {t_fast:7.2f}s  naive {t_slow:7.2f}s  "
                  f"{t_slow / t_fast:5.1f}x  max rel. error {error:.1e}", flush=True)
    if args.out:
        record = {"rows": rows, "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "machine": platform.processor() or platform.machine(),
                  "command": "python perf/attention_importance.py " + " ".join(
                      f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None)}
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
