"""Reader for IDX files (the MNIST/Fashion-MNIST format), gzip-compressed or raw, with strict checks."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class DataFileError(ValueError):
    """A data file is missing, truncated, corrupt or not what it should be; the message names it."""


def read_bytes(path: Path) -> bytes:
    """The file's content, decompressed if it is gzip; a corrupt gzip stream raises DataFileError."""
    raw = Path(path).read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataFileError(f"{path}: corrupt or truncated gzip file ({err}); download it again") from err


def parse_idx(content: bytes, path: Path | str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes: magic 0x0000 + dtype code + rank, big-endian int32 dims, then the data."""
    if len(content) < 4 or content[0] != 0 or content[1] != 0 or content[2] not in _DTYPES:
        raise DataFileError(f"{path}: not an IDX file (bad magic number {content[:4].hex() or 'empty'})")
    dtype, rank = np.dtype(_DTYPES[content[2]]), content[3]
    header = 4 + 4 * rank
    if len(content) < header:
        raise DataFileError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(content, dtype=">i4", count=rank, offset=4))
    expected = header + dtype.itemsize * int(np.prod(dims, dtype=np.int64))
    if len(content) != expected:
        what = "truncated" if len(content) < expected else "has trailing bytes"
        raise DataFileError(f"{path}: IDX file {what}: header says {dims} ({expected} bytes), "
                            f"file has {len(content)} bytes")
    return np.frombuffer(content, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: Path | str) -> np.ndarray:
    """Read an IDX file (raw or .gz) into a numpy array; DataFileError names the file on any defect."""
    path = Path(path)
    return parse_idx(read_bytes(path), path)
