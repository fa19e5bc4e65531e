"""Post-task importance on transformers: clreg's per-sample engine against the naive per-sample loop and against
curvlinops, all in the same run.

Models (float32, eval mode, n sequences of 32 tokens, 10 classes):
- `encoder`: token embedding + 2-layer nn.TransformerEncoder (d = 64, 4 heads, batch-first) + linear head;
- `bert`: a 2-layer BERT classifier (transformers' BertForSequenceClassification from a config, d = 64);
- `gpt2-small`: GPT-2 small's size (GPT2Config(): 12 layers, d = 768, vocabulary 50,257; 124M parameters) as a
  sequence classifier, built from its config (nothing downloaded). Fewer samples (`--large-samples`).

clreg's engine: every parameter of these models has a per-layer rule (no torch.func, no per-sample loop).
The naive loop: one forward per sample, one backward per label (Fisher: the exact sum over labels, weighted by
q; MAS: |∇ ‖softmax‖²|). Values agree (largest difference over the largest value, printed).

Each row also gives the FLOPs of both ways (matrix products and attention, counted by torch's FlopCounterMode),
the engine's FLOP rate, and `speedup_at_peak`: the naive loop's time over the engine's FLOPs at the rate of one large
square matrix product on the same device, the most the engine could gain on this hardware. On sequences the
engine does about the naive loop's FLOPs (each Linear's per-sample gradient Σ_p δ_p ⊗ a_p is the naive weight
gradient), so the speed-up comes from batching alone and is bounded by that figure.

curvlinops (`curvlinops-for-pytorch` 3.x, optional: `pip install curvlinops-for-pytorch`, then
`pip uninstall torchvision` if its backpack dependency pulled a torchvision that does not match the torch build)
offers the exact GGN (which for cross-entropy is n times the exact Fisher) as a linear operator, and no exact
diagonal: its exact diagonal is one GGN product per parameter, diag_i = e_iᵀ G e_i. The script multiplies G onto
`--columns` unit vectors spread over the parameters, checks those entries equal clreg's (relative 1e-5), and
gives the time of the whole diagonal as (time per column) × (number of parameters). Its diagonal estimator,
Hutchinson's, is also run with as many products as fit in clreg's exact time, with its error.

    python perf/transformer_importance.py --out perf/results/transformer_importance.json
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from clreg import importance
from clreg.importance import TaskSample
from clreg.importance.persample import coverage

CLASSES, LENGTH, VOCAB = 10, 32, 100


class Encoder(nn.Module):
    def __init__(self, d=64):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, CLASSES)

    def forward(self, input_ids):
        return self.head(self.encoder(self.embed(input_ids)).mean(1))


class Logits(nn.Module):
    """A Hugging Face classifier's logits from keyword inputs."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits


def build(name: str) -> tuple[nn.Module, int]:
    """The model and its vocabulary."""
    torch.manual_seed(0)
    if name == "encoder":
        return Encoder(), VOCAB
    import transformers

    if name == "bert":
        config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=256, max_position_embeddings=LENGTH, num_labels=CLASSES)
        return Logits(transformers.BertForSequenceClassification(config)), VOCAB
    config = transformers.GPT2Config(num_labels=CLASSES, pad_token_id=0)
    return Logits(transformers.GPT2ForSequenceClassification(config)), config.vocab_size


def naive(measure, model, params, ids):
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(ids)):
        z = model(ids[i:i + 1])[0]
        if measure == "fisher":
            q, logq = z.softmax(0), F.log_softmax(z, 0)
            terms = [(q[y].detach(), -logq[y]) for y in range(CLASSES)]
        else:
            terms = [(1.0, z.softmax(0).square().sum())]
        for k, (w, objective) in enumerate(terms):
            grads = torch.autograd.grad(objective, params, retain_graph=k < len(terms) - 1)
            for t, g in zip(total, grads):
                t.add_(w * (g.square() if measure == "fisher" else g.abs()))
    return [t / len(ids) for t in total]


def engine(measure, model, params, ids):
    return importance.create(measure).task_importance(params, TaskSample(model, ids))


def timed(fn, *args):
    _synchronize()
    start = time.perf_counter()
    out = fn(*args)
    _synchronize()
    return out, time.perf_counter() - start


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def relative_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest difference over the largest value (attention's key bias has an exactly zero gradient, so its own
    values are rounding noise in both)."""
    return max(float((x - y).abs().max()) for x, y in zip(a, b)) / max(float(y.abs().max()) for y in b)


def gemm_rate(device: torch.device, size: int = 2048) -> float:
    """FLOP/s of a large square fp32 matrix product on `device`: what the hardware does at its best."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    for _ in range(3):
        a @ b
    _, seconds = timed(lambda: [a @ b for _ in range(10)])
    return 10 * 2 * size ** 3 / seconds


def hardware_bound(measure, model, params, ids, t_fast, t_slow, peak) -> dict:
    """The FLOPs each way does (torch's FlopCounterMode: matrix products and attention), the engine's rate, and the
    largest speed-up over the naive loop that the engine's FLOPs allow at the matrix-product rate `peak`."""
    from torch.utils.flop_counter import FlopCounterMode

    flops = {}
    for way, fn in (("engine", engine), ("naive", naive)):
        with FlopCounterMode(display=False) as counter:
            fn(measure, model, params, ids)
        flops[way] = counter.get_total_flops()
    return {"engine_gflop": flops["engine"] / 1e9, "naive_gflop": flops["naive"] / 1e9,
            "engine_gflops_per_s": flops["engine"] / t_fast / 1e9, "gemm_peak_gflops_per_s": peak / 1e9,
            "speedup_at_peak": t_slow / (flops["engine"] / peak)}


def curvlinops_row(model, params, ids, fisher, seconds, columns):
    """curvlinops' GGN on `columns` unit vectors (checked against clreg's Fisher) and Hutchinson in equal time."""
    from curvlinops import GGNLinearOperator, hutchinson_diag

    n = len(ids)
    labels = torch.zeros(n, dtype=torch.long)  # the GGN of cross-entropy does not depend on the labels
    ggn = GGNLinearOperator(model, nn.CrossEntropyLoss(reduction="sum"), params, [(ids, labels)],
                            check_deterministic=False)
    flat = torch.cat([f.flatten() for f in fisher])
    size = flat.numel()
    chosen = torch.linspace(0, size - 1, columns).long()
    unit = torch.zeros(size, columns)
    unit[chosen, torch.arange(columns)] = 1.0
    product, t_columns = timed(lambda: ggn @ unit)
    theirs = product[chosen, torch.arange(columns)] / n
    mine = flat[chosen]
    error = float((theirs - mine).abs().max() / flat.abs().max())
    _, t_one = timed(lambda: ggn @ unit[:, :1])
    matvecs = max(1, int(seconds / max(t_one, 1e-9)))
    estimate, t_hutchinson = timed(lambda: hutchinson_diag(ggn, matvecs) / n)
    hutchinson_error = float(((estimate - flat).abs().sum() / flat.abs().sum()))
    return {"curvlinops_columns": columns, "curvlinops_columns_s": t_columns, "curvlinops_max_relative_error": error,
            "curvlinops_exact_diagonal_s": t_columns / columns * size, "parameters": size,
            "hutchinson_matvecs": matvecs, "hutchinson_s": t_hutchinson,
            "hutchinson_relative_l1_error": hutchinson_error}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--large-samples", type=int, default=8)
    parser.add_argument("--models", default="encoder,bert,gpt2-small")
    parser.add_argument("--columns", type=int, default=64, help="unit vectors curvlinops multiplies (0: skip it)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (on CUDA the times are synchronised)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    peak = gemm_rate(device)
    print(f"matrix product rate: {peak / 1e9:.1f} GFLOP/s", flush=True)
    for name in args.models.split(","):
        model, vocab = build(name)
        model.to(device).eval()
        n = args.large_samples if name == "gpt2-small" else args.samples
        ids = torch.randint(1, vocab, (n, LENGTH), generator=torch.Generator().manual_seed(1)).to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        rules = sorted(set(coverage(model, ids[:2]).values()))
        for measure in ("fisher", "mas"):
            engine(measure, model, params, ids[:2])  # warm-up
            fast, t_fast = timed(engine, measure, model, params, ids)
            slow, t_slow = timed(naive, measure, model, params, ids)
            row = {"model": name, "measure": measure, "samples": n, "parameters": sum(p.numel() for p in params),
                   "rules": rules, "engine_s": t_fast, "naive_s": t_slow, "speedup": t_slow / t_fast,
                   "max_relative_error": relative_error(fast, slow)}
            row.update(hardware_bound(measure, model, params, ids, t_fast, t_slow, peak))
            if measure == "fisher" and args.columns and name == "bert":  # the comparison; the encoder's eval-mode
                # fast path has no forward-mode AD, which curvlinops needs
                with sdpa_kernel(SDPBackend.MATH):  # the fused CPU kernel has no forward-mode AD
                    row.update(curvlinops_row(model, params, ids, fast, t_fast, args.columns))
                row["speedup_vs_curvlinops"] = row["curvlinops_exact_diagonal_s"] / t_fast
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        record = {"rows": rows, "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "machine": _cpu(), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  "command": "python perf/transformer_importance.py " + " ".join(
                      f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None)}
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
