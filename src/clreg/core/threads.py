"""How many torch threads a run takes when --threads is not given: the cores that other work leaves idle.

With every core given threads while another job keeps one busy, PyTorch's CPU kernels wait on the busy core
at every parallel section and a run slows down 15-20x (docs/development.md, "Threads")."""
from __future__ import annotations

import os

import torch


def choose_threads(threads: int | None = None, share: int = 1) -> tuple[int, str]:
    """The thread count for each of `share` runs side by side, and where it came from: `threads` when given;
    else the idle cores, max(1, cores - round(1-minute load average)), shared out; else (no load average on
    this platform) torch's default, shared out."""
    if threads:
        return threads, "--threads"
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows; or the load average is unobtainable
        return max(1, torch.get_num_threads() // share), "torch's default"
    idle = max(1, (os.cpu_count() or 1) - round(load))
    return max(1, idle // share), "idle cores"
