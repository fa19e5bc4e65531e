"""How much bf16 autocast changes each importance measure: task 1 of Permuted MNIST at reduced scale
(widths 400,400, 5 epochs, seed 0) trained in fp32 and in bf16 (same seed, same batches); ω of both
correlated (Pearson) over all shared parameters. Trajectory measures train once per measure and
precision (they accumulate the bf16 gradients); post-task measures share one training per precision
(task 1's trajectory does not depend on the method) and are computed in float32 on its weights, on the
sample the trainer would draw. Differences come from the trajectory (bf16 gradients move the weights
differently) and from the gradients a trajectory measure accumulates. Rows are merged into the JSON as
they finish.

    python experiments/bf16_importance.py --data-dir ../shared/datasets --device cpu
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from clreg.benchmarks import derive_seed
from clreg.train.config import RunConfig
from clreg.importance import TaskSample, create
from clreg.models.build import task_forward
from clreg.core.records import machine, versions, write_json
from clreg.train.loop import Trainer, load_benchmark

OUT = Path(__file__).parent / "results" / "bf16"
TRAJECTORY = ["si", "siu", "sib", "sos"]
POST_TASK = ["fisher", "sqrt-fisher", "af", "mas", "masx", "mas-logits", "masx-logits", "weight-magnitude"]
SCALE = dict(benchmark="permuted-mnist", tasks=1, hidden=[400, 400], epochs=5, batch_size=256, seed=0, c=1.0)


def pearson(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Pearson r over all entries of two lists of tensors, in float64."""
    x = torch.cat([t.reshape(-1).double() for t in a])
    y = torch.cat([t.reshape(-1).double() for t in b])
    return float(torch.corrcoef(torch.stack([x, y]))[0, 1])


def trained(method: str, precision: str, data_dir: str | None, device: str) -> tuple[Trainer, float]:
    """A trainer after task 1 (trained and consolidated) and its accuracy on task 1."""
    config = RunConfig(method=method, precision=precision, data_dir=data_dir, device=device, **SCALE)
    trainer = Trainer(config, load_benchmark(config), progress=False)
    return trainer, float(trainer.run()[0, 0])


def post_task(trainer: Trainer, names: list[str]) -> dict[str, list[torch.Tensor]]:
    """Each post-task measure on the trained weights, on the sample Trainer.consolidate draws."""
    n = min(trainer.config.samples, trainer.bench.train_size(0))
    generator = torch.Generator().manual_seed(derive_seed(trainer.config.seed, 5, 0))
    x, y = trainer.bench.batch(0, torch.randperm(trainer.bench.train_size(0), generator=generator)[:n].to(trainer.device))
    sample = TaskSample(trainer.model, x, y, task_forward(trainer.model, 0))
    return {name: [t.cpu() for t in create(name).task_importance(trainer.reg.params, sample)] for name in names}


def row(fp32: list[torch.Tensor], bf16: list[torch.Tensor], acc32: float, acc16: float) -> dict:
    return {"pearson_fp32_bf16": pearson(fp32, bf16), "accuracy_fp32": acc32, "accuracy_bf16": acc16,
            "sum_ratio_bf16_over_fp32": float(sum(t.double().sum() for t in bf16) / sum(t.double().sum() for t in fp32))}


def save(rows: dict, args) -> None:
    path = OUT / "importance.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(path.read_text())["measures"] if path.exists() else {}
    write_json(path, {"scale": SCALE, "measures": {**previous, **rows}, "device": args.device, "machine": machine(),
                      "versions": versions(), "command": " ".join(["python", *sys.argv])})
    for method, r in rows.items():
        print(f"{method:<17} r = {r['pearson_fp32_bf16']:.4f}  task-1 accuracy {100 * r['accuracy_fp32']:.2f}% (fp32) "
              f"{100 * r['accuracy_bf16']:.2f}% (bf16)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--measures", default=",".join(TRAJECTORY + POST_TASK))
    args = parser.parse_args()
    wanted = args.measures.split(",")
    for method in [m for m in wanted if m in TRAJECTORY]:
        (fp32, acc32), (bf16, acc16) = [trained(method, p, args.data_dir, args.device) for p in ("fp32", "bf16")]
        save({method: row([t.cpu() for t in fp32.reg.last_importance.values()],
                          [t.cpu() for t in bf16.reg.last_importance.values()], acc32, acc16)}, args)
    names = [m for m in wanted if m in POST_TASK]
    if names:
        (fp32, acc32), (bf16, acc16) = [trained("finetune", p, args.data_dir, args.device) for p in ("fp32", "bf16")]
        first, second = post_task(fp32, names), post_task(bf16, names)
        save({name: row(first[name], second[name], acc32, acc16) for name in names}, args)


if __name__ == "__main__":
    main()
