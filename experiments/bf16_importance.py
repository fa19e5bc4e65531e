"""How much bf16 autocast changes each importance measure: task 1 of Permuted MNIST at reduced scale
(widths 400,400, 5 epochs, seed 0) trained once in fp32 and once in bf16 per measure (same seed, same
batches); ω of both runs correlated (Pearson) over all shared parameters. Differences come from the
trajectory (bf16 gradients move the weights differently) and, for trajectory measures, from the bf16
gradients they accumulate; post-task measures are computed in float32 on the trained weights.

    python experiments/bf16_importance.py --data-dir ../shared/datasets --device cpu
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from clreg.config import RunConfig
from clreg.results import machine, versions, write_json
from clreg.train import Trainer, load_benchmark

OUT = Path(__file__).parent / "results" / "bf16"
MEASURES = ["si", "siu", "sib", "sos", "fisher", "sqrt-fisher", "af", "mas", "masx", "mas-logits", "masx-logits",
            "weight-magnitude"]
SCALE = dict(benchmark="permuted-mnist", tasks=1, hidden=[400, 400], epochs=5, batch_size=256, seed=0, c=1.0)


def pearson(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Pearson r over all entries of two lists of tensors, in float64."""
    x = torch.cat([t.reshape(-1).double() for t in a])
    y = torch.cat([t.reshape(-1).double() for t in b])
    return float(torch.corrcoef(torch.stack([x, y]))[0, 1])


def importance(method: str, precision: str, data_dir: str | None, device: str) -> tuple[list[torch.Tensor], float]:
    """ω after task 1 and the accuracy on it."""
    config = RunConfig(method=method, precision=precision, data_dir=data_dir, device=device, **SCALE)
    trainer = Trainer(config, load_benchmark(config), progress=False)
    accuracy = trainer.run()
    return [t.cpu() for t in trainer.reg.last_importance.values()], float(accuracy[0, 0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--measures", default=",".join(MEASURES))
    args = parser.parse_args()
    rows = {}
    for method in args.measures.split(","):
        start = time.perf_counter()
        fp32, acc32 = importance(method, "fp32", args.data_dir, args.device)
        bf16, acc16 = importance(method, "bf16", args.data_dir, args.device)
        rows[method] = {"pearson_fp32_bf16": pearson(fp32, bf16), "accuracy_fp32": acc32, "accuracy_bf16": acc16,
                        "sum_ratio_bf16_over_fp32": float(sum(t.double().sum() for t in bf16) /
                                                          sum(t.double().sum() for t in fp32))}
        print(f"{method:<17} r = {rows[method]['pearson_fp32_bf16']:.4f}  task-1 accuracy {100 * acc32:.2f}% (fp32) "
              f"{100 * acc16:.2f}% (bf16)  ({time.perf_counter() - start:.0f}s)", flush=True)
    write_json(OUT / "importance.json", {"scale": SCALE, "measures": rows, "device": args.device, "machine": machine(),
                                         "versions": versions(), "command": " ".join(["python", *sys.argv])})


if __name__ == "__main__":
    main()
