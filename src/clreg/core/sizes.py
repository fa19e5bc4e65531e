"""Sizes a machine can hold: the memory available on a device, and a check, made before allocating, that
what a run asks for (a network, per-task arrays, the accuracy matrix) fits into it."""
from __future__ import annotations

import os

import torch

from clreg.core.options import SettingError

MAX_CLASSES = 100_000  # labels of a data set are in [0, classes), classes at most this many


class SizeError(SettingError):
    """What a run asks for needs more memory than the device has; the message says how much and which setting
    to lower (its keyword, or on the command line its flag)."""


def available_bytes(device: torch.device | str = "cpu") -> int:
    """Memory that can still be allocated on `device`: on CUDA the free memory (torch.cuda.mem_get_info),
    on the CPU MemAvailable of /proc/meminfo, else the physical memory (os.sysconf)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def gigabytes(count: float) -> str:
    """A byte count in words: "12.3 GB"."""
    return f"{count / 1e9:.3g} GB"


def check_memory(what: str, needed: float, device: torch.device | str = "cpu", lower: str | None = None) -> None:
    """SizeError if `needed` bytes (the estimate for `what`) exceed the memory available on `device`; the
    message names the setting `lower`, if given, as the one to lower."""
    available = available_bytes(device)
    if needed > available:
        text = (f"{what} needs about {gigabytes(needed)}, more than the {gigabytes(available)} of memory available on "
                f"{torch.device(device)}").replace("{", "{{").replace("}", "}}")
        raise SizeError(text + (": lower {0}" if lower else ""), *([lower] if lower else []))
