"""Builds and loads clreg's one native kernel, the fused training step (`csrc/fused_step.c`).

The kernel is plain C with OpenMP and no PyTorch headers, so it compiles in about a second with the
system's C compiler at first use and is cached by content hash in `$CLREG_CACHE_DIR/native`
(default: the user cache directory). Without a compiler, or with `CLREG_NATIVE=0`, `load()` returns
None and clreg uses its pure-PyTorch path: the same formulas, rounded differently, so not the same numbers
(docs/development.md, "Reproducibility").
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

from clreg.core.cache import cache_dir

SOURCE = Path(__file__).parent / "csrc" / "fused_step.c"
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fopenmp", "-fPIC", "-shared", "-std=c11"]


class StepOptions(ctypes.Structure):
    """Mirror of `clreg_step_options` in fused_step.c (same field order and types)."""

    _fields_ = [(name, ctypes.c_double) for name in (
        "weight_decay", "decay_factor", "one_minus_beta1", "beta2", "one_minus_beta2", "step_size",
        "inverse_bias_correction2_sqrt", "eps", "task_weight", "other_weight", "decay", "one_minus_decay",
        "penalty_scale", "penalty_offset")] + [
        (name, ctypes.c_int64) for name in ("decoupled", "penalty", "statistic", "threads", "narrow")]


_library: ctypes.CDLL | None = None
_tried = False


def _cpu_signature() -> bytes:
    """The machine and its instruction-set flags: a kernel built with -march=native runs only there."""
    flags = ""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        pass
    return (platform.machine() + platform.system() + flags).encode()


def _build(target: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler found (set CC)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(built), "-lm"], check=True,
                       capture_output=True, text=True)
        os.replace(built, target)  # atomic: concurrent builders never see a half-written library


def load() -> ctypes.CDLL | None:
    """The kernel library, built if needed; None if disabled or it cannot be built (warns once)."""
    global _library, _tried
    if os.environ.get("CLREG_NATIVE", "1") == "0":
        return None
    if _tried:
        return _library
    _tried = True
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + _cpu_signature()).hexdigest()[:16]
    target = cache_dir() / "native" / f"fused_step-{key}.so"
    try:
        if not target.exists():
            _build(target)
        library = ctypes.CDLL(str(target))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        warnings.warn(f"clreg: the fused training step is unavailable ({detail.strip()[:200]}); "
                      "using the pure-PyTorch path", RuntimeWarning, stacklevel=2)
        return None
    function = library.clreg_fused_step
    function.restype = ctypes.c_int64
    function.argtypes = [ctypes.c_int64, ctypes.POINTER(StepOptions)] + [ctypes.c_void_p] * 8
    _library = library
    return _library
