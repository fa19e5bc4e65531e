"""Dataset readers: canonical files, download with checksums, cache, clear errors."""
from .arrays import UserArrays, load_arrays
from .cifar import load_cifar10, load_cifar100
from .digits import load_digits
from .fetch import ENV_CACHE_DIR, ENV_DATA_DIR
from .idx import DataFileError, parse_idx, read_idx
from .mnist import ImageDataset, load_fashion_mnist, load_mnist
from .tiny_imagenet import load_tiny_imagenet

__all__ = ["DataFileError", "ImageDataset", "UserArrays", "load_arrays", "load_cifar10", "load_cifar100", "load_digits",
           "load_fashion_mnist", "load_mnist", "load_tiny_imagenet", "parse_idx", "read_idx", "ENV_DATA_DIR",
           "ENV_CACHE_DIR"]
