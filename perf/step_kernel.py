"""What the fused training step costs per step, next to the memory traffic it cannot avoid.

On the parameter shapes of the 784-W-W-10 MLP, times one optimiser step of: torch's own fused Adam,
clreg's fused kernel doing Adam only, Adam + penalty gradient, Adam + penalty + SI's path integral,
and Adam + penalty + SOS's second moment; and, as the floor, plain copies over the same bytes. The
extra arrays are what bound SI and SOS: the penalty reads θ* and 2P, the statistic reads and writes
its state, i.e. four more passes over the parameters than Adam's seven. Then the whole
`Regularizer.step(optimizer)` for SI and SOS on each backend of clreg.core.step: the native kernel, the same
formula under torch.compile (is compiling the one definition as fast as the hand-written kernel?), the
optimiser's own step between the formulas ("torch"), and the formula run eagerly, one operation at a time.

    python perf/step_kernel.py --out perf/results/step_kernel.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import clreg
from clreg.core.device import describe, synchronize
from clreg.core.step import BACKENDS
from clreg.core import fused
from clreg.core import native
from clreg.importance import StepStatistic
from clreg.core.records import machine, versions, write_json


def timed(fn, seconds: float = 2.0, device: str = "cpu") -> float:
    """Median milliseconds of fn() over repeated calls for about `seconds` (the device synchronised around each)."""
    fn()
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        synchronize(torch.device(device))
        start = time.perf_counter()
        fn()
        synchronize(torch.device(device))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def measure(width: int, device: str = "cpu") -> dict:
    shapes = [(width, 784), (width,), (width, width), (width,), (10, width), (10,)]
    params = [torch.nn.Parameter(torch.randn(s, device=device) * 0.05) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, device=device) * 1e-3
    numel = sum(p.numel() for p in params)
    source, target = torch.randn(numel, device=device), torch.empty(numel, device=device)
    torch_adam = torch.optim.Adam(params, lr=1e-6, fused=True)
    row = {"parameters": numel, "torch_fused_adam_ms": timed(torch_adam.step, device=device),
           "copy_one_array_ms": timed(lambda: target.copy_(source), device=device)}
    if device == "cpu":
        row.update(kernel_rows(params))
    backends = [b for b in BACKENDS if device == "cpu" or b != "native"]
    for method in ("si", "sos"):
        for backend in backends:
            row[f"regularizer_step_{method}_{backend}_ms"] = regularizer_step_ms(params, method, backend)
        reference = "native" if device == "cpu" else "torch"
        row[f"compiled_over_{reference}_{method}"] = row[f"regularizer_step_{method}_compiled_ms"] / \
            row[f"regularizer_step_{method}_{reference}_ms"]
    return row


def kernel_rows(params: list[torch.nn.Parameter]) -> dict:
    """The native kernel alone: Adam, + penalty, + SI's path, + SOS's moment."""
    anchor = [p.detach().clone() for p in params]
    twice_precision = [torch.rand(p.shape) for p in params]
    state = [torch.zeros(p.shape) for p in params]
    clreg_adam = torch.optim.Adam(params, lr=1e-6)
    clreg_adam.step()  # create the state
    path, moment = StepStatistic("path"), StepStatistic("moment", decay=0.999)
    with_penalty = {p: (a, tp, None, None) for p, a, tp in zip(params, anchor, twice_precision)}
    with_state = {p: (a, tp, s, None) for p, a, tp, s in zip(params, anchor, twice_precision, state)}
    row = {"clreg_adam_ms": timed(lambda: fused.adam_step(clreg_adam, {}, 0, None, 0.0, 0.0)),
           "clreg_adam_penalty_ms": timed(lambda: fused.adam_step(clreg_adam, with_penalty, 1, None, 0.0, 0.0)),
           "clreg_adam_penalty_si_ms": timed(lambda: fused.adam_step(clreg_adam, with_state, 1, path, 1.0, 0.0)),
           "clreg_adam_penalty_sos_ms": timed(lambda: fused.adam_step(clreg_adam, with_state, 1, moment, 1.0, 0.0))}
    row["si_extra_ms"] = row["clreg_adam_penalty_si_ms"] - row["clreg_adam_ms"]
    row["si_extra_bytes"] = 4 * 4 * sum(p.numel() for p in params)  # θ*, 2P and the statistic read, the statistic written
    return row


def regularizer_step_ms(params: list[torch.nn.Parameter], method: str, backend: str) -> float:
    """Median ms of `Regularizer.step(Adam)` with an active penalty on one backend of clreg.core.step."""
    reg = clreg.Regularizer(torch.nn.ParameterList(params), method, c=1.0)
    reg.penalty_term.consolidate([torch.rand(p.shape) for p in params], params)
    optimizer = torch.optim.Adam(params, lr=1e-6, fused=True)
    if backend == "compiled":
        for _ in range(3):  # compiles once per tensor rank and setting: not part of a step's cost
            reg.step(optimizer, backend=backend)
    return timed(lambda: reg.step(optimizer, backend=backend), device=params[0].device.type)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="2000,400")
    parser.add_argument("--threads", type=int, default=None, help="torch threads [default: torch's]")
    parser.add_argument("--device", default="cpu", help="cpu (with the native kernel) or cuda")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cpu" and native.load() is None:
        sys.exit("the fused kernel is unavailable here (no C compiler?)")
    results = {}
    for width in (int(w) for w in args.widths.split(",")):
        row = results[str(width)] = measure(width, args.device)
        print(f"width {width} ({row['parameters'] / 1e6:.2f}M parameters): " + ", ".join(
            f"{k[:-3]} {v:.2f} ms" for k, v in row.items() if k.endswith("_ms")) + ", " + ", ".join(
            f"{k} {v:.2f}" for k, v in row.items() if k.startswith("compiled_over")), flush=True)
    device = describe(torch.device(args.device))
    if args.out:
        write_json(args.out, {"benchmark": "step_kernel", "results": results, "machine": machine(), "device": device,
                              "threads": torch.get_num_threads(),
                              "versions": versions(), "command": " ".join(["python", *sys.argv])})


if __name__ == "__main__":
    main()
