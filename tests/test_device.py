"""Device and precision handling that can be checked without a GPU: every tensor clreg allocates follows
the parameters' dtype and device (the property that keeps CUDA tensors on CUDA), clear errors, the
divergence guard's exact step, and what identifies a run."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import clreg
from clreg.train import guard as guard_module, loop as train
from clreg.benchmarks import Split, permuted_digits
from clreg.train.config import RunConfig
from clreg.core import device as device_module
from clreg.core.device import check_combination, resolve_device, single_device
from clreg.sweeps.scheduling import least_busy, worker_devices
from test_cli import clreg as clreg_cli

ALL_METHODS = sorted(clreg.importance.REGISTRY)


def floating_tensors(obj, path="", seen=None):
    """(path, tensor) for every floating tensor reachable from a clreg object (not the model's own)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, (nn.Module, torch.Generator)):
        return
    seen.add(id(obj))
    if isinstance(obj, Tensor):
        if obj.is_floating_point():
            yield path, obj
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            yield from floating_tensors(item, f"{path}[{i}]", seen)
    elif isinstance(obj, dict):
        for key, item in obj.items():
            yield from floating_tensors(item, f"{path}.{key}", seen)
    elif type(obj).__module__.startswith("clreg") and hasattr(obj, "__dict__"):
        for key, item in vars(obj).items():
            yield from floating_tensors(item, f"{path}.{key}", seen)


def assert_all(obj, dtype, device, skip=()):
    found = [(path, t) for path, t in floating_tensors(obj) if not any(s in path for s in skip)]
    assert found
    wrong = [(path, t.dtype, t.device) for path, t in found if t.dtype != dtype or t.device.type != device]
    assert not wrong, wrong


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("mode", ["online", "debiased"])
def test_the_regularizer_allocates_in_the_parameters_dtype(method, mode):
    keep_tasks = method != "l2-const"  # l2-const replaces Ω: online, without per-task terms
    if mode != "online" and not keep_tasks:
        pytest.skip("l2-const replaces Omega: online only")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    options = {"batch_size": 16} if method == "sos" else {}
    reg = clreg.Regularizer(model, method, c=1.0, prior=0.1, penalty=mode, keep_tasks=keep_tasks,
                              **options)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for task in range(2):
        x, y = torch.randn(32, 5, dtype=torch.double), torch.randint(0, 3, (32,))
        for _ in range(3):
            optimizer.zero_grad()
            F.cross_entropy(model(x[:16]), y[:16]).backward()
            reg.penalty().item()
            if reg.measure.needs_independent_gradient:
                reg.before_step(independent_loss=lambda: F.cross_entropy(model(x[16:]), y[16:]))
            reg.step(optimizer)
        reg.end_task(x, y)
        if keep_tasks:
            reg.proxy_losses()
    assert_all(reg, torch.float64, "cpu")


@pytest.mark.parametrize("method", ["si", "sos", "ewc"])
def test_the_trainer_allocates_in_the_parameters_dtype(monkeypatch, method):
    bench = permuted_digits(num_tasks=2, seed=0)
    bench.train = Split(bench.train.x.double(), bench.train.y)
    bench.evaluation = Split(bench.evaluation.x.double(), bench.evaluation.y)
    build = train.build_model
    monkeypatch.setattr(train, "build_model", lambda *a, **k: build(*a, **k).double())
    config = RunConfig(benchmark="permuted-digits", method=method, c=1.0, tasks=2, epochs=1, batch_size=64,
                       hidden=[20], penalty="debiased", prior=0.1, proxy_every=5, device="cpu")
    trainer = train.Trainer(config, bench, progress=False)
    trainer.run()
    assert all(p.dtype == torch.float64 for p in trainer.model.parameters())
    assert_all(trainer, torch.float64, "cpu", skip=(".bench",))


def test_device_names_and_combinations_are_checked():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "cuda:x", "CPU", ""):
        with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
            RunConfig(device=bad)
    with pytest.raises(ValueError, match="precision must be one of fp32, tf32, bf16"):
        RunConfig(precision="fp16")
    with pytest.raises(ValueError, match="CUDA only"):
        check_combination(torch.device("cpu"), "tf32")
    if not torch.cuda.is_available():
        assert worker_devices("auto", 3) is None
        with pytest.raises(ValueError, match="CUDA is not available here"):
            resolve_device("cuda:0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cli_asking_for_cuda_without_it_fails_in_one_line():
    done = clreg_cli("run", "--benchmark", "permuted-digits", "--device", "cuda")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "CUDA is not available here" in done.stderr
    done = clreg_cli("run", "--benchmark", "permuted-digits", "--device", "cpu", "--precision", "tf32")
    assert done.returncode == 2 and "CUDA only" in done.stderr
    done = clreg_cli("sweep", "no-such.yaml", "--device", "cuda:3", "--dry-run")
    assert done.returncode == 2


def test_shared_parameters_on_two_devices_are_refused():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2, device="meta"))
    with pytest.raises(ValueError, match="different devices.*'0.weight' on cpu.*'1.weight' on meta"):
        clreg.Regularizer(model, "si")
    assert single_device([("a", torch.zeros(1))]) == torch.device("cpu")


@pytest.mark.parametrize("every", [1, 7, 50])
def test_the_divergence_guard_names_the_first_bad_step(every):
    guard = guard_module.DivergenceGuard(torch.device("cpu"), every)
    losses = [1.0] * 11 + [float("nan"), float("inf"), 2.0]
    with pytest.raises(guard_module.Diverged, match=r"became nan at step 12 \(task 3\)"):
        for step, value in enumerate(losses, start=1):
            guard.before_step(torch.tensor(value), None, step, task=2)
            guard.after_step(torch.tensor(0.0))
        guard.check()


def test_the_device_is_not_part_of_a_runs_identity_but_the_precision_is():
    base = RunConfig(benchmark="permuted-digits", device="cpu")
    assert RunConfig(benchmark="permuted-digits", device="cuda:1").key() == base.key()
    assert RunConfig(benchmark="permuted-digits", precision="bf16").key() != base.key()


@pytest.mark.filterwarnings("ignore:precision bf16")
def test_a_bf16_run_trains_and_records_its_device():
    config = RunConfig(benchmark="permuted-digits", method="si", c=1.0, tasks=2, epochs=5, batch_size=32, lr=1e-3,
                       hidden=[100], precision="bf16", device="cpu", reinit=True)
    result = train.run(config, progress=False)
    assert result["device"]["type"] == "cpu" and result["config"]["precision"] == "bf16"
    matrix = result["accuracy_matrix"]
    assert min(matrix[k][k] for k in range(2)) > 0.8  # each task is learned in bf16 (chance: 0.1)


def test_sweep_workers_take_the_least_busy_gpu():
    gpus = ["cuda:0", "cuda:1"]
    assert least_busy(gpus, []) == "cuda:0"
    assert least_busy(gpus, ["cuda:0"]) == "cuda:1"
    assert least_busy(gpus, ["cuda:0", "cuda:1", "cuda:1"]) == "cuda:0"
    assert least_busy(["cuda:0"] * 3, ["cuda:0"]) == "cuda:0"  # --device cuda:0: every worker there


@pytest.mark.parametrize("native", [True, False])
def test_bf16_without_native_matmuls_warns(monkeypatch, native):
    monkeypatch.setattr(device_module, "native_bf16", lambda device: native)
    config = RunConfig(benchmark="permuted-digits", tasks=1, epochs=1, hidden=[10], precision="bf16", device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train.Trainer(config, permuted_digits(1, 0), progress=False)
    slow = [w for w in caught if "no native bfloat16 matmuls" in str(w.message)]
    assert len(slow) == (0 if native else 1)
