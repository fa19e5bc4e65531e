"""Where a run trains and in which precision: `--device` and `--precision`, resolved and checked.

Devices: `auto` (CUDA when available, else the CPU), `cpu`, `cuda`, `cuda:N`. Precisions:
- `fp32`: float32 throughout (TF32 matmuls off on CUDA, so that a GPU computes what the CPU computes);
- `tf32`: float32 storage, TensorFloat-32 matmuls and convolutions on CUDA (Ampere and later);
- `bf16`: bfloat16 autocast for the training forward and backward passes; master weights, optimiser
  state, Ω, anchors and every importance measure stay float32.
"""
from __future__ import annotations

import contextlib
import platform
import re
import warnings
from pathlib import Path
from typing import Iterator

import torch

PRECISIONS = ("fp32", "tf32", "bf16")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
CPU_MEMORY_BUDGET = 1 << 30  # bytes the per-sample engine may use on the CPU


def check_device_name(name: str) -> None:
    """Raise ValueError unless `name` has the form auto, cpu, cuda or cuda:N (availability is checked later)."""
    if not isinstance(name, str) or not _DEVICE.match(name):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")


def check_precision(precision: str) -> None:
    """Raise ValueError unless `precision` is one of PRECISIONS."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def resolve_device(name: str) -> torch.device:
    """The torch.device `name` stands for; ValueError with what is available if it cannot be used."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, but no GPU is visible"
        raise ValueError(f"--device {name}: CUDA is not available here (torch {torch.__version__}: {build}); "
                         "use --device cpu or auto")
    index = int(name.split(":")[1]) if ":" in name else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: there are {torch.cuda.device_count()} CUDA device(s), cuda:0.."
                         f"cuda:{torch.cuda.device_count() - 1}")
    return torch.device("cuda", index)


def check_combination(device: torch.device, precision: str) -> None:
    """Raise ValueError for a precision the device cannot give (TF32 exists on CUDA only)."""
    check_precision(precision)
    if precision == "tf32" and device.type != "cuda":
        raise ValueError("precision tf32 (TensorFloat-32 matmuls) exists on CUDA only; on the CPU use fp32 or bf16")


def native_bf16(device: torch.device) -> bool | None:
    """True if `device` multiplies bfloat16 matrices natively (CUDA; a CPU with AVX512-BF16 or AMX), False if
    not, None where the CPU's flags cannot be read. Without it, bf16 autocast is emulated and slow."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return None
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return None
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def warn_if_slow(device: torch.device, precision: str) -> None:
    """Warn when bf16 is asked for where it has no native matmuls (it then runs several times slower)."""
    if precision == "bf16" and native_bf16(device) is False:
        warnings.warn(f"precision bf16 on {device}: this processor has no native bfloat16 matmuls (no AVX512-BF16 "
                      "or AMX), so autocast emulates them, several times slower than fp32 (about 9x per step "
                      "measured at widths 400,400); bf16 pays on CUDA and on CPUs with AVX512-BF16 or AMX",
                      RuntimeWarning, stacklevel=2)


def describe(device: torch.device) -> dict:
    """Plain data naming the device, for result records (the GPU's name on CUDA)."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "index": device.index, "name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda}
    return {"type": device.type, "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native_bf16(device)}


@contextlib.contextmanager
def precision_scope(device: torch.device, precision: str) -> Iterator[None]:
    """Float32 matmul/convolution precision on CUDA for the duration of a run (restored afterwards)."""
    check_combination(device, precision)
    if device.type != "cuda":
        yield
        return
    matmul, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = cudnn


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` for precision bf16; a no-op context otherwise."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_budget(device: torch.device) -> int:
    """Bytes the per-sample engine may use: 1 GiB on the CPU, half the free memory of a GPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(CPU_MEMORY_BUDGET // 8, free // 2)
    return CPU_MEMORY_BUDGET


def single_device(named: list[tuple[str, torch.Tensor]]) -> torch.device:
    """The one device all `named` tensors are on; ValueError naming two that differ otherwise."""
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.device != first.device:
            raise ValueError(f"the regularised parameters sit on different devices ({first_name!r} on {first.device}, "
                             f"{name!r} on {t.device}); move the model to one device before creating the Regularizer")
    return first.device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (for timings); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
