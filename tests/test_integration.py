"""Real MNIST, reduced (3 tasks, hidden 100,100, 1 epoch): the penalty is what keeps task 1."""
import pytest

from clreg.benchmarks import permuted_mnist
from clreg.train.config import RunConfig
from clreg.train.loop import run

pytestmark = pytest.mark.slow  # real training end to end: minutes
SCALE = dict(tasks=3, epochs=1, hidden=[100, 100], batch_size=256, seed=0, reinit=False)



@pytest.fixture
def mnist_bench(mnist_dir):
    return permuted_mnist(3, seed=0, data_dir=mnist_dir)


def task1_after_all(bench, method, c):
    result = run(RunConfig(method=method, c=c, **SCALE), progress=False, bench=bench)
    return result["accuracy_matrix"][-1][0], result["accuracy_matrix"][-1][-1]


def test_ewc_and_si_keep_task_one_finetune_forgets(mnist_bench):
    finetune, _ = task1_after_all(mnist_bench, "finetune", 0.0)
    for method, c in (("ewc", 100.0), ("si", 5.0)):
        kept, last = task1_after_all(mnist_bench, method, c)
        off, _ = task1_after_all(mnist_bench, method, 0.0)  # the same method with the penalty switched off
        assert kept > finetune + 0.08, (method, kept, finetune)
        assert kept > off + 0.08, (method, kept, off)
        assert last > 0.85, (method, last)  # still learns the new task
    assert finetune < 0.8
