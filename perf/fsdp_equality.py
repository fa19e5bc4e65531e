"""FSDP2 against one process: the largest differences behind tests/test_distributed.py's equality test.

For each measure of that test (EWC exact and sampled, SI, SOS, MAS): 2 CPU processes (gloo) train the test's model
sharded with fully_shard for 2 tasks; one process trains it whole. Printed: the largest difference of the
parameters and of Ω (the ranks' shards put together), each over the largest value, float32.

    python perf/fsdp_equality.py
"""
from __future__ import annotations

import pathlib
import sys
import tempfile

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from test_distributed import SHARDED, fsdp_worker, sharded_model, train  # noqa: E402

from clreg import Regularizer  # noqa: E402


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def main() -> None:
    for case, (method, options) in SHARDED.items():
        folder = pathlib.Path(tempfile.mkdtemp())
        mp.start_processes(fsdp_worker, args=(method, options, str(folder)), nprocs=2, start_method="spawn")
        ranks = [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(2)]
        net = sharded_model()
        reg = Regularizer(net, method, c=1.0, **options)
        train(net, reg)
        params = max(relative(theirs, mine.detach()) for mine, theirs in zip(net.parameters(), ranks[0]["params"]))
        omega = max(relative(torch.cat([r["omega"][name] for r in ranks]), value) for name, value in reg.omega.items())
        print(f"{case:15s} parameters {params:.1e}   Ω {omega:.1e}", flush=True)


if __name__ == "__main__":
    main()
