"""Dataset readers: canonical files, download with checksums, cache, clear errors."""
from .digits import load_digits
from .fetch import ENV_CACHE_DIR, ENV_DATA_DIR
from .idx import DataFileError, parse_idx, read_idx
from .mnist import ImageDataset, load_mnist

__all__ = ["DataFileError", "ImageDataset", "load_digits", "load_mnist", "parse_idx", "read_idx",
           "ENV_DATA_DIR", "ENV_CACHE_DIR"]
