"""The numerical checks again on CUDA (skipped without a GPU): each post-task measure and each trajectory
statistic CPU vs CUDA, a 3-task run CPU vs CUDA, checkpoints CUDA → CPU and back, no host synchronisation
per training step, and bf16 on the GPU. tests/test_backends.py also runs every statistic on CUDA."""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import clreg
from clreg import importance
from clreg.train import loop as train
from clreg.benchmarks import permuted_digits
from clreg.train.config import RunConfig
from clreg.importance import TaskSample
from test_device import assert_all

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
POST_TASK = ["fisher", "sqrt-fisher", "af", "mas", "mas-logits", "masx", "masx-logits", "weight-magnitude", "l2"]


class SmallNet(nn.Module):
    """A convolution, a linear layer on 3-D inputs, a LayerNorm (the torch.func fallback) and a head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.norm = nn.LayerNorm(5)
        self.mix = nn.Linear(5, 5)
        self.head = nn.Linear(75, 4)

    def forward(self, x):
        h = torch.tanh(self.conv(x))  # (n, 3, 5, 5)
        h = self.mix(self.norm(h))  # Linear and LayerNorm on the last dimension
        return self.head(h.flatten(1))


@pytest.mark.parametrize("name", POST_TASK)
def test_post_task_measures_agree_on_cpu_and_cuda(name):
    torch.manual_seed(0)
    model = SmallNet().double()
    x = torch.randn(9, 2, 5, 5, dtype=torch.double)
    on_cpu = importance.create(name).task_importance(list(model.parameters()), TaskSample(model, x))
    model_gpu = copy.deepcopy(model).cuda()
    on_gpu = importance.create(name).task_importance(list(model_gpu.parameters()), TaskSample(model_gpu, x.cuda()))
    for a, b in zip(on_cpu, on_gpu, strict=True):
        assert b.device.type == "cuda" and b.dtype == torch.float64
        torch.testing.assert_close(b.cpu(), a, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method,options", [("si", {}), ("siu", {}), ("sib", {}), ("sos", {}), ("sos", {"alpha": 1.0})],
                         ids=str)
def test_trajectory_statistics_agree_on_cpu_and_cuda(method, options):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 30), nn.ReLU(), nn.Linear(30, 4)).double()
    data = [(torch.randn(32, 6, dtype=torch.double), torch.randint(0, 4, (32,))) for _ in range(10)]
    states = []
    for device in ("cpu", "cuda"):
        m = copy.deepcopy(model).to(device)
        reg = clreg.Regularizer(m, method, c=1.0, **options)
        optimizer = torch.optim.Adam(m.parameters(), lr=1e-2)
        for x, y in data:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            F.cross_entropy(m(x[:16]), y[:16]).backward()
            if reg.measure.needs_independent_gradient:
                reg.before_step(independent_loss=lambda x=x, y=y: F.cross_entropy(m(x[16:]), y[16:]))
            reg.step(optimizer)
        states.append(reg.end_task())
    for name in states[0]:
        torch.testing.assert_close(states[1][name].cpu(), states[0][name], rtol=1e-8, atol=1e-12)


def config(device, **overrides):
    settings = dict(benchmark="permuted-digits", method="si", c=1.0, tasks=3, epochs=1, batch_size=32, lr=1e-3,
                    hidden=[100], seed=0, reinit=True, device=device)
    return RunConfig(**{**settings, **overrides})


@pytest.mark.parametrize("method", ["si", "sos", "ewc"])
def test_a_three_task_run_agrees_on_cpu_and_cuda(method):
    bench = permuted_digits(num_tasks=3, seed=0)
    cpu = train.run(config("cpu", method=method), progress=False, bench=bench)
    gpu = train.run(config("cuda", method=method), progress=False, bench=permuted_digits(num_tasks=3, seed=0))
    assert gpu["device"]["type"] == "cuda" and gpu["device"]["name"]
    for row_cpu, row_gpu in zip(cpu["accuracy_matrix"], gpu["accuracy_matrix"]):
        assert max(abs(a - b) for a, b in zip(row_cpu, row_gpu)) <= 0.02  # float32 rounding differs, no more


def test_everything_stays_on_the_gpu_and_a_step_never_waits_for_the_host():
    trainer = train.Trainer(config("cuda", method="sos", penalty="debiased", prior=0.1), permuted_digits(3, 0),
                            progress=False)
    trainer.train_task(0)
    assert trainer.bench.device.type == "cuda"
    assert_all(trainer.reg, torch.float32, "cuda")
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.train_task(1)  # 1 epoch: ~40 steps, one shuffle moved to the GPU, one sample at task end
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 10, [str(w.message) for w in syncs[:3]]


@pytest.mark.parametrize("first,second", [("cuda", "cpu"), ("cpu", "cuda")])
def test_a_checkpoint_resumes_on_another_device(tmp_path, monkeypatch, first, second):
    path = tmp_path / "run.pt"
    original = train.Trainer.train_task

    def stop_at_task_two(self, task, reinit=True):
        if task == 1:
            raise KeyboardInterrupt
        original(self, task, reinit)
    monkeypatch.setattr(train.Trainer, "train_task", stop_at_task_two)
    with pytest.raises(KeyboardInterrupt):
        train.run(config(first, method="ewc"), progress=False, checkpoint_path=path)
    monkeypatch.setattr(train.Trainer, "train_task", original)
    resumed = train.run(config(second, method="ewc"), progress=False, checkpoint_path=path, resume=True)
    whole = train.run(config(first, method="ewc"), progress=False)
    assert resumed["device"]["type"] == second
    assert resumed["accuracy_matrix"][0] == whole["accuracy_matrix"][0]  # task 1 came from the checkpoint
    assert min(resumed["accuracy_matrix"][k][k] for k in range(3)) > 0.5


def test_bf16_and_tf32_runs_on_the_gpu():
    for precision in ("bf16", "tf32"):
        result = train.run(config("cuda", precision=precision, epochs=3), progress=False)
        assert min(result["accuracy_matrix"][k][k] for k in range(3)) > 0.7, precision


@pytest.mark.parametrize("method", ["si", "siu", "fisher"])
def test_a_vectorised_job_on_cuda_agrees_with_the_runs_alone(method):
    """On CUDA the stacked Linear is one batched product (cuBLAS rounds it differently from single ones), so
    the vectorised runs agree with the runs alone to rounding: parameters after one short task sequence."""
    from clreg.vectorized.trainer import VectorizedTrainer

    configs = [RunConfig(benchmark="permuted-digits", method=method, tasks=2, hidden=[32, 32], epochs=1, batch_size=32,
                         device="cuda", seed=seed, c=c) for seed, c in ((0, 0.5), (1, 2.0), (2, 1.0))]
    job = VectorizedTrainer(configs)
    results = job.run()
    for config, member, result in zip(configs, job.members, results):
        trainer = train.Trainer(config, train.load_benchmark(config), progress=False)
        accuracy = trainer.run()
        for p, q in zip(trainer.model.parameters(), member.model.parameters()):
            torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-5)
        assert abs(result["average_accuracy"] - float(accuracy[-1].mean())) < 0.02
