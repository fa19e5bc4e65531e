"""Brute-force references for the tests: one autograd backward per sample (and label)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def per_sample_grads(model, params, x, objective):
    """List over samples of per-parameter gradients of objective(logits_of_one_sample)."""
    out = []
    for i in range(len(x)):
        z = model(x[i:i + 1])[0]
        out.append(torch.autograd.grad(objective(z), params, allow_unused=True))
    return out


def one_sample(model, x, i):
    """The logits of sample i alone: model(x[i:i+1]), or model(**{k: v[i:i+1]}) for keyword inputs."""
    if isinstance(x, dict):
        return model(**{k: v[i:i + 1] for k, v in x.items()})[0]
    return model(x[i:i + 1])[0]


def naive_measure(name, model, params, x, labels=None):
    """The post-task measures of SPEC §3, written out sample by sample and label by label."""
    n = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
    total = [torch.zeros_like(p) for p in params]
    for i in range(n):
        z = one_sample(model, x, i)
        q = z.softmax(0)
        terms = []  # (weight, objective) pairs whose per-sample gradients enter
        if name in ("fisher", "sqrt-fisher", "af"):
            terms = [(q[y].item(), lambda z, y=y: -F.log_softmax(z, 0)[y]) for y in range(len(z))]
        elif name == "fisher-empirical":
            terms = [(1.0, lambda z: -F.log_softmax(z, 0)[labels[i]])]
        elif name == "mas":
            terms = [(1.0, lambda z: z.softmax(0).square().sum())]
        elif name == "mas-logits":
            terms = [(1.0, lambda z: z.square().sum())]
        elif name == "masx":
            y0 = int(q.argmax())
            terms = [(1.0, lambda z: z.softmax(0)[y0] ** 2)]
        elif name == "masx-logits":
            y0 = int(z.argmax())
            terms = [(1.0, lambda z: z[y0] ** 2)]
        power = (lambda g: g.abs()) if name in ("af", "mas", "mas-logits", "masx", "masx-logits") else torch.square
        for w, objective in terms:
            z = one_sample(model, x, i)
            grads = torch.autograd.grad(objective(z), params)
            for t, g in zip(total, grads):
                t += w * power(g)
    total = [t / n for t in total]
    if name == "sqrt-fisher":
        total = [t.sqrt() for t in total]
    return total
