"""Which device each sweep worker's next run goes to."""
from __future__ import annotations

import torch

from clreg.core.device import resolve_device


def worker_devices(name: str, workers: int) -> list[str] | None:
    """One device per sweep worker: with CUDA, the visible GPUs in turn (one each while there are enough);
    None where runs stay on the CPU."""
    device = resolve_device(name)
    if device.type != "cuda":
        return None
    if ":" in name:
        return [name] * workers
    count = torch.cuda.device_count()
    return [f"cuda:{i % count}" for i in range(workers)]


def least_busy(devices: list[str], busy: list[str]) -> str:
    """The first of `devices` with the fewest runs in `busy` (the devices of the runs in flight)."""
    return min(dict.fromkeys(devices), key=busy.count)
