"""Peak memory of continual fine-tuning on a GPT-2-small-sized model on the CPU: plain fine-tuning against clreg's
Regularizer for online EWC ("fisher"), SI, SOS and MAS (clreg issue 31 §3, "Memory").

The model is transformers' GPT2ForSequenceClassification built from GPT2Config() (12 layers, d = 768, vocabulary
50,257: 124M parameters, all regularised; 10 labels; dropout 0 so that SI's and SOS's g_t needs no extra pass;
nothing downloaded). Each configuration runs in its own process (so that peaks do not mix), with one torch thread:
Adam (lr 1e-5) for `--steps` steps of task 1 on random token batches (`--batch` × `--tokens`), `reg.end_task` on
`--sample` sequences (Fisher and MAS with forward=lambda x: model(input_ids=x).logits), then `--steps` steps of
task 2 with the penalty. A configuration is `method:path`, the path being "fast" (backpropagate the task loss,
`reg.step(optimizer)`: the native fused Adam step) or "penalty" (`loss + reg.penalty()`, `optimizer.step()`,
`reg.after_step()`); a third part ":bf16" keeps Ω and θ* in bfloat16 (`storage="bf16"`: the step then runs on
the formula backend); "plain" has no regulariser.

Memory is the process's resident set (/proc/self/status): before each phase the high-water mark is reset
(`echo 5 > /proc/self/clear_refs`), so a phase's peak is its own; all figures are relative to the resident set
after building the model (the parameters themselves). glibc's malloc keeps freed heap blocks below its mmap
threshold resident, so the children run with MALLOC_MMAP_THRESHOLD_=1 MiB: every tensor from 1 MiB up is its own
mapping and goes back to the system when freed, and the resident set follows the live tensors. A copy is one
parameter-sized float32 tensor set, 4 bytes × the regularised parameters. Besides the resident set, `held` lists
the parameter-sized tensors the Regularizer references after each phase (found by walking its attributes, the
model's parameters and the optimiser's state left out, each storage once), in copies.

`--small-budget` reruns Fisher and MAS with a smaller budget for the per-sample engine (the sample then takes
several chunks: the task end's working set should shrink with it); `--compare-tree` reruns online EWC with clreg
imported from another source tree (the code before a change).

    OMP_NUM_THREADS=1 python perf/memory_large_model.py --small-budget 134217728 --compare-tree /tmp/clreg-before \
        --out perf/results/memory_large_model.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

CONFIGS = ("plain", "fisher:fast", "fisher:penalty", "si:fast", "si:penalty", "sos:fast", "mas:fast",
           "fisher:fast:bf16", "si:fast:bf16", "sos:fast:bf16", "mas:fast:bf16")  # method:path[:storage]
CLASSES = 10
MMAP_THRESHOLD = 1 << 20  # bytes: glibc serves allocations from this size up with their own mapping


def status_bytes(field: str) -> int:
    """VmRSS or VmHWM of this process, in bytes."""
    with open("/proc/self/status") as f:
        return 1024 * int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def reset_peak() -> None:
    """Reset VmHWM to the current resident set (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def build(seed: int):
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(num_labels=CLASSES, pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0)
    return transformers.GPT2ForSequenceClassification(config), config.vocab_size


def held_tensors(root, exclude: set[int], size: int) -> dict[str, float]:
    """Parameter-sized storages reachable from `root`'s attributes (lists, tuples, dicts, dataclasses and objects of
    clreg's own classes followed), each storage once, `exclude`d storages left out: attribute path -> copies."""
    found: dict[int, tuple[str, int]] = {}
    seen: set[int] = set()

    def walk(obj, path: str) -> None:
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            if storage.data_ptr() not in exclude and storage.data_ptr() not in found:
                found[storage.data_ptr()] = (path, storage.nbytes())
            return
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            for item in obj:
                walk(item, path)
        elif isinstance(obj, dict):
            for item in obj.values():
                walk(item, path)
        elif dataclasses.is_dataclass(obj) or type(obj).__module__.startswith("clreg"):
            for key, item in vars(obj).items():
                if key not in ("model", "optimizer", "params", "group"):
                    walk(item, f"{path}.{key}")

    walk(root, "reg")
    totals: dict[str, float] = {}
    for path, nbytes in found.values():
        totals[path] = totals.get(path, 0.0) + nbytes / size
    return {path: round(copies, 3) for path, copies in sorted(totals.items()) if copies >= 0.01}


def child(config: str, args) -> dict:
    """One configuration, in this process: the phases' resident-set figures in bytes above the built model."""
    import clreg

    torch.set_num_threads(1)
    method, _, rest = config.partition(":")
    path, _, storage = rest.partition(":")
    model, vocab = build(args.seed)
    model.train()
    base = status_bytes("VmRSS")
    params = [p for p in model.parameters() if p.requires_grad]
    copy = 4 * sum(p.numel() for p in params)
    generator = torch.Generator().manual_seed(args.seed + 1)
    data = [(torch.randint(1, vocab, (args.batch, args.tokens), generator=generator),
             torch.randint(0, CLASSES, (args.batch,), generator=generator)) for _ in range(2 * args.steps)]
    sample = torch.randint(1, vocab, (args.sample, args.tokens), generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    options = {"storage": storage} if storage else {}  # (so that --compare-tree can run code from before it)
    reg = None if method == "plain" else clreg.Regularizer(model, method, c=1.0, memory_budget=args.budget, **options)
    phases: dict[str, dict] = {}

    def held() -> dict[str, float]:
        exclude = {p.untyped_storage().data_ptr() for p in params}
        exclude |= {t.untyped_storage().data_ptr() for state in optimizer.state.values() for t in state.values()
                    if isinstance(t, torch.Tensor)}
        exclude |= {p.grad.untyped_storage().data_ptr() for p in params if p.grad is not None}
        return {} if reg is None else held_tensors(reg, exclude, copy)

    def phase(name: str, fn) -> None:
        before = status_bytes("VmRSS")
        reset_peak()
        start = time.perf_counter()
        fn()
        phases[name] = {"before": before - base, "peak": status_bytes("VmHWM") - base,
                        "after": status_bytes("VmRSS") - base, "seconds": round(time.perf_counter() - start, 1),
                        "held": held()}

    def train(batches) -> None:
        for ids, labels in batches:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(input_ids=ids).logits, labels)
            if reg is None:
                loss.backward()
                optimizer.step()
            elif path == "fast":
                loss.backward()
                reg.step(optimizer)
            else:
                (loss + reg.penalty()).backward()
                optimizer.step()
                reg.after_step()

    phases["regularizer"] = {"after": status_bytes("VmRSS") - base, "held": held()}
    phase("task1", lambda: train(data[:args.steps]))
    if reg is not None:
        forward = None if reg.measure.trajectory else (lambda x: model(input_ids=x).logits)
        phase("end_task", lambda: reg.end_task(sample, forward=forward))
    phase("task2", lambda: train(data[args.steps:]))
    return {"config": config, "parameters": copy // 4, "copy_bytes": copy, "base_rss": base,
            "overall_peak": status_bytes("VmHWM") - base, "phases": phases}


def run_child(config: str, args, tree: str | None = None, budget: int | None = None) -> dict:
    """`config` in a fresh process, importing clreg from `tree`/src if given (else as installed), the per-sample
    engine given `budget` bytes (None: its default)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD))
    if tree:
        env["PYTHONPATH"] = os.path.join(tree, "src")
    command = [sys.executable, __file__, "--child", config, "--steps", str(args.steps), "--batch", str(args.batch),
               "--tokens", str(args.tokens), "--sample", str(args.sample), "--seed", str(args.seed)]
    if budget:
        command += ["--budget", str(budget)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{config} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def line(row: dict, plain: dict | None) -> dict:
    """One configuration in copies: each phase's peak; the task end's working set (its peak above the resident set
    before it, less the tensors it left the Regularizer holding: ω); the copies the Regularizer holds after the
    task end and during task 2; and the peaks above plain fine-tuning's."""
    copies = lambda b: round(b / row["copy_bytes"], 2)  # noqa: E731
    phases = row["phases"]
    held = {name: round(sum(p["held"].values()), 2) for name, p in phases.items()}
    out = {name: copies(p["peak"]) for name, p in phases.items() if "peak" in p}
    out["overall"] = copies(row["overall_peak"])
    if "end_task" in phases:
        e = phases["end_task"]
        out["end_task_working_set"] = round(copies(e["peak"] - e["before"]) - (held["end_task"] - held["task1"]), 2)
        out["end_task_working_set_gib"] = round(out["end_task_working_set"] * row["copy_bytes"] / 2**30, 2)
        out["held_after_end_task"] = held["end_task"]
    out["held_in_task2"] = held["task2"]
    if plain is not None:
        out["task2_added_to_plain"] = copies(phases["task2"]["peak"] - plain["phases"]["task2"]["peak"])
        out["overall_added_to_plain"] = copies(row["overall_peak"] - plain["overall_peak"])
    return out


def run_all(configs: list[str], args, plain: dict | None, tree: str | None = None, budget: int | None = None,
            label: str = "") -> tuple[list[dict], dict | None]:
    """Each configuration in its own process, its summary line printed; the rows and the plain row."""
    rows = []
    for config in configs:
        rows.append(run_child(config, args, tree, budget))
        plain = rows[-1] if config == "plain" else plain
        print(label, config, json.dumps(line(rows[-1], plain)), flush=True)
    return rows, plain


def configs(text: str) -> list[str]:
    """Comma-separated configurations, checked against CONFIGS."""
    chosen = text.split(",")
    for config in chosen:
        if config not in CONFIGS:
            raise argparse.ArgumentTypeError(f"unknown configuration {config!r}; choose from {', '.join(CONFIGS)}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=configs, default=list(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--steps", type=int, default=3, help="training steps per task")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--sample", type=int, default=8, help="sequences given to end_task")
    parser.add_argument("--budget", type=int, default=None, help="the per-sample engine's bytes [default: 1 GiB on the CPU]")
    parser.add_argument("--small-budget", type=int, default=None,
                        help="also run --small-budget-configs with this budget (bytes), to see the task end follow it")
    parser.add_argument("--small-budget-configs", type=configs, default=["fisher:fast", "mas:fast"])
    parser.add_argument("--compare-tree", default=None,
                        help="also run --compare-configs with clreg imported from this tree's src/ (e.g. before a change)")
    parser.add_argument("--compare-configs", type=configs, default=["fisher:fast"])
    parser.add_argument("--compare-label", default=None, help="what --compare-tree holds, for the record")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    from clreg.core.device import CPU_MEMORY_BUDGET
    from clreg.core.records import machine, versions, write_json

    rows, plain = run_all(args.configs, args, None, budget=args.budget)
    variants = {}
    if args.small_budget:
        small, _ = run_all(args.small_budget_configs, args, plain, budget=args.small_budget, label="small budget")
        variants["small_budget"] = {"memory_budget": args.small_budget, "rows": small,
                                    "summary_copies": {r["config"]: line(r, plain) for r in small}}
    if args.compare_tree:
        before, _ = run_all(args.compare_configs, args, plain, tree=args.compare_tree, budget=args.budget, label="compare")
        variants["compare"] = {"tree": args.compare_label or args.compare_tree, "rows": before,
                               "summary_copies": {r["config"]: line(r, plain) for r in before}}
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"Model name:\s*(.*)", lscpu)
    record = {"benchmark": "memory_large_model", "summary_copies": {r["config"]: line(r, plain) for r in rows},
              "rows": rows, **variants, "memory_budget": args.budget or CPU_MEMORY_BUDGET,
              "malloc_mmap_threshold": MMAP_THRESHOLD, "cpu_model": model.group(1).strip() if model else None,
              "machine": machine(), "versions": versions(),
              "command": "OMP_NUM_THREADS=1 python perf/memory_large_model.py " + shlex.join(sys.argv[1:])}
    if args.out:
        write_json(args.out, record)


if __name__ == "__main__":
    main()
