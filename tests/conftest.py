import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture
def mnist_dir():
    """The real MNIST copy beside the project (../shared/datasets), or skip."""
    root = Path(os.environ.get("CLREG_DATA_DIR", SHARED_DATA))
    if not (root / "mnist" / "train-images-idx3-ubyte.gz").is_file() and not (root / "mnist" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"no MNIST copy under {root}")
    return root
