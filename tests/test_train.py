"""The trainer's protocol on Permuted Digits (no download): determinism, re-init, optimiser reset."""
import numpy as np
import pytest
import torch

from clreg.benchmarks import permuted_digits
from clreg.train.config import RunConfig
from clreg.train.loop import Trainer, load_benchmark, run

SMALL = dict(benchmark="permuted-digits", tasks=2, epochs=2, batch_size=32, hidden=[20])


def test_same_seed_same_numbers():
    a = run(RunConfig(method="si", c=1.0, seed=3, **SMALL), progress=False)
    b = run(RunConfig(method="si", c=1.0, seed=3, **SMALL), progress=False)
    c = run(RunConfig(method="si", c=1.0, seed=4, **SMALL), progress=False)
    assert a["accuracy_matrix"] == b["accuracy_matrix"]
    assert a["accuracy_matrix"] != c["accuracy_matrix"]


def test_every_task_is_a_different_permutation_including_the_first():
    bench = permuted_digits(num_tasks=3, seed=0)
    perms = [p.tolist() for p in bench.permutations]
    assert perms[0] != list(range(64)) and len({tuple(p) for p in perms}) == 3
    x, _ = bench.batch(1, torch.tensor([0, 5]))
    np.testing.assert_array_equal(x.numpy(), bench.train.x[[0, 5]][:, bench.permutations[1]].numpy())


def test_reinit_redraws_shared_weights_and_sets_theta_start():
    trainer = Trainer(RunConfig(method="si", c=1.0, reinit=True, **SMALL), permuted_digits(2, 0), progress=False)
    trainer.train_task(0)
    trained = [p.detach().clone() for p in trainer.reg.params]
    starts = []
    begin = trainer.reg.measure.begin_task
    trainer.reg.measure.begin_task = lambda params: (starts.append([p.detach().clone() for p in params]), begin(params))
    trainer.train_task(1)
    start = starts[0]  # θ_start of task 2: recorded after the re-draw, before any step
    assert all(not torch.allclose(s, t) for s, t in zip(start[::2], trained[::2]))
    assert all(torch.all(b == 0.1) for b in start[1::2])  # biases back at 0.1
    assert all(not torch.allclose(s, t) for s, t in zip(start, trainer.reg.params))  # then trained


def test_task_sizes_give_each_permuted_task_its_own_subset():
    """task_sizes: task t trains on sizes[t] examples only (a fixed subset per seed and task), its epoch
    is that size, and every batch of the task comes from its subset."""
    config = RunConfig(benchmark="permuted-digits", method="si", c=1.0, tasks=3, epochs=2, batch_size=16,
                       hidden=[16], task_sizes=[64, 400, 64], device="cpu")
    bench = load_benchmark(config)
    assert [bench.train_size(t) for t in range(3)] == [64, 400, 64]
    trainer = Trainer(config, bench, progress=False)
    assert [trainer.steps_per_task(t) for t in range(3)] == [2 * 64 // 16, 2 * 400 // 16, 2 * 64 // 16]
    subsets = [set(s.tolist()) for s in bench.subsets]
    assert subsets[0] != subsets[2] and all(len(s) == n for s, n in zip(subsets, (64, 400, 64)))
    again = load_benchmark(config)
    assert all(torch.equal(a, b) for a, b in zip(bench.subsets, again.subsets))  # fixed by the seed
    x, y = bench.batch(0, torch.arange(64))
    rows = bench.train.x[bench.subsets[0]][:, bench.permutations[0]]
    assert torch.equal(x, rows) and torch.equal(y, bench.train.y[bench.subsets[0]])
    assert trainer.run().shape == (3, 3)
    with pytest.raises(ValueError, match="task_sizes gives 2 sizes; permuted-digits has 3 tasks here"):
        load_benchmark(RunConfig(benchmark="permuted-digits", tasks=3, task_sizes=[5, 5]))
    with pytest.raises(ValueError, match="task_sizes must be positive integers"):
        RunConfig(benchmark="permuted-digits", task_sizes=[0, 5])
    assert "task_sizes" not in RunConfig(benchmark="permuted-digits").canonical()  # old keys unchanged
