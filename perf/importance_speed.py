"""Post-task importance on n samples: the naive per-sample loop, a plain torch.func vmap, and clreg.

For the 784-2000-2000-10 MLP (docs/algorithms.md §6) and 1000 inputs: exact Fisher, AF and MAS computed by
(a) one autograd backward per sample and label (the reference, summed in float64), (b) torch.func vmap(grad) over
samples, chunked, squaring/abs-ing the materialised per-sample gradients, (c) clreg's engine.
Each (measure, way) runs in its own process so that its peak memory (max RSS) is its own. Values of
(b) and (c) are compared with (a) (max relative error over parameters). In float32 the naive loop's
batch-of-one forward passes round differently from a batched one, and ReLU units whose input is within
rounding of zero switch, so float32 values differ by ~1e-4 for reasons unrelated to the engine; the
exactness check therefore also runs (a) and (c) in float64 on the same model and inputs.

    python perf/importance_speed.py --out perf/results/importance_speed.json
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from clreg import importance
from clreg.importance import TaskSample
from clreg.models.build import MLP

POWER = {"fisher": "square", "af": "abs", "mas": "abs"}


def objectives(name: str, z: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, scalar objective) pairs of one sample's logits z (C,) whose gradients enter."""
    q = z.softmax(0)
    if name in ("fisher", "af"):
        logq = F.log_softmax(z, 0)
        return [(q[y].detach(), -logq[y]) for y in range(len(z))]
    return [(torch.ones(()), q.square().sum())]


def naive(name, model, params, x):
    total = [torch.zeros_like(p, dtype=torch.float64) for p in params]  # an accurate sum of 10^4 terms
    h = torch.square if POWER[name] == "square" else torch.abs
    for i in range(len(x)):
        z = model(x[i:i + 1])[0]
        terms = objectives(name, z)
        for k, (w, objective) in enumerate(terms):
            grads = torch.autograd.grad(objective, params, retain_graph=k < len(terms) - 1)
            for t, g in zip(total, grads):
                t.add_(w * h(g))
    return [(t / len(x)).to(params[0].dtype) for t in total]


def plain_vmap(name, model, params, x, chunk=50):
    names = [n for n, _ in model.named_parameters()]
    h = torch.square if POWER[name] == "square" else torch.abs

    def per_label(p, xi, y):
        z = functional_call(model, dict(zip(names, p)), (xi[None],))[0]
        return -F.log_softmax(z, 0)[y] if name != "mas" else z.softmax(0).square().sum()

    total = [torch.zeros_like(p) for p in params]
    detached = [p.detach() for p in params]
    for start in range(0, len(x), chunk):
        xs = x[start:start + chunk]
        if name == "mas":
            grads = vmap(grad(per_label), in_dims=(None, 0, None))(detached, xs, 0)
            for t, g in zip(total, grads):
                t.add_(h(g).sum(0))
            continue
        q = model(xs).softmax(1).detach()
        for y in range(q.shape[1]):
            grads = vmap(grad(per_label), in_dims=(None, 0, None))(detached, xs, y)
            for t, g in zip(total, grads):
                t.add_(torch.tensordot(q[:, y], h(g), dims=1))
    return [t / len(x) for t in total]


def clreg_engine(name, model, params, x):
    return importance.create(name).task_importance(params, TaskSample(model, x))


WAYS = {"naive": naive, "vmap": plain_vmap, "clreg": clreg_engine}


def worker(name: str, way: str, n: int, path: str, dtype: str = "float32") -> None:
    """Run one (measure, way) and save its values, timing and peak memory."""
    torch.manual_seed(0)
    model = MLP(784, [2000, 2000], 10).eval().to(getattr(torch, dtype))
    x = torch.rand(n, 784, generator=torch.Generator().manual_seed(1)).to(getattr(torch, dtype))
    params = list(model.parameters())
    first = None
    if way == "clreg":  # a process's first call includes one-time set-up (thread pool, allocator): timed apart
        start = time.perf_counter()
        WAYS[way](name, model, params, x)
        first = time.perf_counter() - start
    start = time.perf_counter()
    values = WAYS[way](name, model, params, x)
    seconds = time.perf_counter() - start
    torch.save({"values": values, "seconds": seconds, "first_call_seconds": first,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, path)


def relative_error(values, reference) -> float:
    return max(float((v - r).abs().max() / r.abs().max()) for v, r in zip(values, reference))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--measures", default="fisher,af,mas")
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", nargs=5, metavar=("MEASURE", "WAY", "N", "PATH", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, way, n, path, dtype = args.worker
        return worker(name, way, int(n), path, dtype)
    import tempfile
    from clreg.core.records import machine, versions, write_json

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.measures.split(","):
            runs = {}
            for way, dtype in [*((w, "float32") for w in WAYS), ("naive", "float64"), ("clreg", "float64")]:
                path = f"{tmp}/{name}-{way}-{dtype}.pt"
                subprocess.run([sys.executable, __file__, "--worker", name, way, str(args.samples), path, dtype],
                               check=True)
                runs[way, dtype] = torch.load(path)
            reference = runs["naive", "float32"]["values"]
            rows[name] = {way: {"seconds": r["seconds"], "first_call_seconds": r["first_call_seconds"],
                                "peak_rss_mb": r["peak_rss_mb"],
                                "speedup_vs_naive": runs["naive", "float32"]["seconds"] / r["seconds"],
                                "max_relative_error_vs_naive_float32": relative_error(r["values"], reference)}
                          for (way, dtype), r in runs.items() if dtype == "float32"}
            rows[name]["clreg"]["max_relative_error_vs_naive_float64"] = relative_error(
                runs["clreg", "float64"]["values"], runs["naive", "float64"]["values"])
            rows[name]["naive"]["seconds_float64"] = runs["naive", "float64"]["seconds"]
            for way, r in rows[name].items():
                exact = r.get("max_relative_error_vs_naive_float64")
                first = f" (first call {r['first_call_seconds']:.2f}s)" if r["first_call_seconds"] else ""
                print(f"{name:<7}{way:<7}{r['seconds']:8.2f}s{first} {r['peak_rss_mb']:8.0f} MB peak "
                      f"{r['speedup_vs_naive']:7.1f}x  rel.err float32 {r['max_relative_error_vs_naive_float32']:.1e}"
                      + (f", float64 {exact:.1e}" if exact is not None else ""), flush=True)
    if args.out:
        write_json(args.out, {"benchmark": "importance_speed", "model": "MLP 784-2000-2000-10",
                              "samples": args.samples, "results": rows, "machine": machine(),
                              "versions": versions(), "command": " ".join(["python", *sys.argv])})


if __name__ == "__main__":
    main()
