"""Dataset readers: canonical files, download with checksums, cache, clear errors."""
from clreg.data.arrays import UserArrays, load_arrays
from clreg.data.cifar import load_cifar10, load_cifar100
from clreg.data.digits import load_digits
from clreg.data.fetch import ENV_CACHE_DIR, ENV_DATA_DIR
from clreg.data.idx import DataFileError, parse_idx, read_idx
from clreg.data.dataset import ImageDataset
from clreg.data.mnist import load_fashion_mnist, load_mnist
from clreg.data.tiny_imagenet import load_tiny_imagenet

__all__ = ["DataFileError", "ImageDataset", "UserArrays", "load_arrays", "load_cifar10", "load_cifar100", "load_digits",
           "load_fashion_mnist", "load_mnist", "load_tiny_imagenet", "parse_idx", "read_idx", "ENV_DATA_DIR",
           "ENV_CACHE_DIR"]
