"""What a run will hold in memory, estimated before anything is allocated, and refused naming the setting to
lower when it cannot fit (clreg.core.sizes)."""
from __future__ import annotations

import math

from clreg.benchmarks import Benchmark
from clreg.core.device import resolve_device
from clreg.core.sizes import check_memory
from clreg.models.build import parameter_count

FLOAT_BYTES = 4
# float32 copies of the shared parameters a run keeps at least: weights, gradients, Adam's two moments, the
# penalty's anchor and strength, the measure's statistic, the regulariser's scratch and the importance just
# measured; the separate and debiased penalties keep an anchor and a strength per task besides
PARAMETER_COPIES = 9


def check_tasks(tasks: int | None) -> None:
    """SizeError if the T × T accuracy matrix (float64, on the CPU) cannot fit into memory."""
    if tasks is not None:
        check_memory(f"{tasks} tasks: the accuracy matrix (tasks x tasks)", tasks * tasks * 8, "cpu", "tasks")


def check_run_size(config, bench: Benchmark) -> None:
    """SizeError naming the setting to lower if the run's network with the copies a run keeps, or that and one
    batch's activations, need more memory than the run's device has."""
    device = resolve_device(config.device)
    count = parameter_count(config.network_name, bench.input_shape, config.widths, bench.classes)
    copies = PARAMETER_COPIES + (2 * bench.num_tasks if config.penalty != "online" else 0)
    network = count * FLOAT_BYTES * copies
    check_memory(f"the {config.network_name} network with widths {','.join(map(str, config.widths))} ({count:,} "
                 f"parameters, {copies} copies of them kept)", network, device, "hidden")
    classes = bench.classes if isinstance(bench.classes, int) else max(bench.classes)
    activations = config.batch_size * (math.prod(bench.input_shape) + sum(config.widths) + classes) * FLOAT_BYTES * 2
    check_memory(f"a batch of {config.batch_size} (its activations and gradients) beside the network",
                 network + activations, device, "batch_size")
