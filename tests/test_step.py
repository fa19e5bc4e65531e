"""The one regularised step (clreg.core.step), in the style of torch's OptimizerInfo tests: every registered
optimiser × statistic kind × penalty mode × backend against an independent float64 reference (torch.optim's own
step in float64, the penalty and the statistics as plain expressions), and the backends against each other: the
stacked step against the per-tensor one bit for bit, the native kernel and the compiled formula against it to
rounding (torch's vectorised sqrt on the CPU is not the correctly rounded one that C and the compiler use)."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch import Tensor, nn

import clreg
from clreg.core import formulas, fused, native, optimizers
from clreg.core import step as core_step
from clreg.core.statistic import KINDS, Kind, StepStatistic, register_kind
from clreg.importance import TrajectoryMeasure

STEPS = 6
SHAPES = [(7, 5), (11,)]


@dataclass(frozen=True)
class OptimizerInfo:
    """An optimiser setting the harness runs: its torch class with these options, on any dtype."""

    name: str
    make: Callable[..., torch.optim.Optimizer]  # (params, lr) -> optimiser
    lr: float


OPTIMIZERS = [
    OptimizerInfo("adam", lambda ps, lr: torch.optim.Adam(ps, lr=lr), 1e-2),
    OptimizerInfo("adam-l2", lambda ps, lr: torch.optim.Adam(ps, lr=lr, weight_decay=0.1), 1e-2),
    OptimizerInfo("adamw", lambda ps, lr: torch.optim.AdamW(ps, lr=lr, weight_decay=0.1, betas=(0.8, 0.99)), 1e-2),
    OptimizerInfo("sgd", lambda ps, lr: torch.optim.SGD(ps, lr=lr), 0.05),
    OptimizerInfo("sgd-momentum", lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9, dampening=0.1,
                                                                 weight_decay=1e-3), 0.05),
    OptimizerInfo("sgd-nesterov", lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9, nesterov=True,
                                                                 weight_decay=1e-3), 0.05),
]
STATISTICS = {"none": None, "path": StepStatistic("path"), "path-other": StepStatistic("path", 1.0, -1.0),
              "moment": StepStatistic("moment", 1.0, -0.5, 0.99)}
PENALTIES = [core_step.NO_PENALTY, core_step.ADD_PENALTY, core_step.PENALTY_IN_GRAD]


@dataclass
class Problem:
    """Everything one run of the harness reads, in float64: start, per-step gradients g_t and g'_t, centre, 2P."""

    params: list[Tensor]
    grads: list[list[Tensor]]
    others: list[list[Tensor]]
    centre: list[Tensor]
    twice_precision: list[Tensor]


def problem(seed: int = 0) -> Problem:
    g = torch.Generator().manual_seed(seed)
    rand = lambda shape, scale=1.0: scale * torch.randn(shape, generator=g, dtype=torch.float64)  # noqa: E731
    return Problem([rand(s) for s in SHAPES], [[rand(s, 0.1) for s in SHAPES] for _ in range(STEPS)],
                   [[rand(s, 0.1) for s in SHAPES] for _ in range(STEPS)], [rand(s) for s in SHAPES],
                   [torch.rand(s, generator=g, dtype=torch.float64) for s in SHAPES])


def reference(info: OptimizerInfo, statistic, penalty: int, data: Problem, lr: float, scale: float = 1.0,
              offset: float = 0.0):
    """float64: torch.optim's own step on g (+ ∇R), the statistic as its formula reads in docs/algorithms.md §2."""
    params = [nn.Parameter(p.clone()) for p in data.params]
    optimizer = info.make(params, lr)
    stats = [torch.zeros_like(p) for p in data.params]
    for t in range(STEPS):
        before = [p.detach().clone() for p in params]
        for i, p in enumerate(params):
            pen = (scale * data.twice_precision[i] + offset) * (before[i] - data.centre[i])
            p.grad = data.grads[t][i] + (pen if penalty != core_step.NO_PENALTY else 0)
        optimizer.step()
        if statistic is not None:
            a, b, d = statistic.task_weight, statistic.independent_weight, statistic.decay
            for i, p in enumerate(params):
                u = a * data.grads[t][i] + b * data.others[t][i]
                if statistic.kind == "path":
                    stats[i] -= u * (p.detach() - before[i])
                else:
                    stats[i] = d * stats[i] + (1 - d) * u * u
    return [p.detach() for p in params], stats


def formula_run(info: OptimizerInfo, statistic, penalty: int, data: Problem, backend: str, lr: float,
                device: str = "cpu", penalty_scalars: tuple[float, float] = (1.0, 0.0), storage=torch.float32):
    """float32 through one backend of clreg.core.step (per tensor), on `device`; results on the CPU. The
    penalty's 2P is data.twice_precision·penalty_scalars[0] + penalty_scalars[1] (the online penalty's form)."""
    f32 = lambda t: t.to(device, torch.float32)  # noqa: E731
    params = [nn.Parameter(f32(p)) for p in data.params]
    optimizer = info.make(params, lr)
    centre = [c.to(device, storage) for c in data.centre]  # the penalty's state, in its storage dtype
    twice_precision = [tp.to(device, storage) for tp in data.twice_precision]
    stats = [torch.zeros_like(p) for p in params]
    entry = optimizers.lookup(optimizer)
    for t in range(STEPS):
        for i, p in enumerate(params):
            grad = f32(data.grads[t][i])
            if penalty == core_step.PENALTY_IN_GRAD:  # the penalty's backward already put ∇R into .grad
                grad = grad + formulas.penalty_gradient(p.detach(), centre[i], twice_precision[i], *penalty_scalars)
            p.grad = grad
        others = [f32(o) for o in data.others[t]]
        regularized = {p: (centre[i] if penalty else None, twice_precision[i] if penalty else None,
                           stats[i] if statistic else None, others[i] if statistic else None)
                       for i, p in enumerate(params)}
        weights = (statistic.task_weight, statistic.independent_weight) if statistic else (0.0, 0.0)
        if backend == "native":
            fused.adam_step(optimizer, regularized, penalty, statistic, *weights, penalty_scalars=penalty_scalars)
        else:
            core_step.optimizer_step(entry, optimizer, regularized, penalty, statistic, *weights,
                                     compiled=backend == "compiled", penalty_scalars=penalty_scalars)
    return [p.detach().cpu() for p in params], [s.cpu() for s in stats]


def stacked_run(info: OptimizerInfo, statistic, penalty: int, data: Problem, lrs: list[float], scales: list[float],
                device: str = "cpu"):
    """K runs (learning rates `lrs`, penalty strengths `scales`) as one: `tensor_step` on [K, ...] tensors."""
    k = len(lrs)
    entry = optimizers.lookup(info.make([nn.Parameter(torch.zeros(1))], 1.0))
    groups = [info.make([nn.Parameter(torch.zeros(1))], lr).param_groups[0] for lr in lrs]
    stack = lambda ts: torch.stack([t.to(device, torch.float32) for t in ts])  # noqa: E731
    params = [stack([p] * k) for p in data.params]
    centre = [stack([c] * k) for c in data.centre]
    twice_precision = [stack([s * tp for s in scales]) for tp in data.twice_precision]
    states = [[torch.zeros_like(p) for _ in entry.state] for p in params]
    stats = [torch.zeros_like(p) for p in params]
    for t in range(1, STEPS + 1):
        per_run = [entry.scalars(group, t) for group in groups]
        for i, p in enumerate(params):
            grad = stack([data.grads[t - 1][i]] * k)
            if penalty == core_step.PENALTY_IN_GRAD:
                grad = grad + formulas.penalty_gradient(p, centre[i], twice_precision[i])
            other = stack([data.others[t - 1][i]] * k)
            kind = statistic.definition if statistic else None
            new_p, new_state, new_stat = core_step.tensor_step(
                entry.update, p, grad, tuple(states[i]), core_step.stacked_scalars(per_run, p), penalty,
                centre[i] if penalty else None, twice_precision[i] if penalty else None, kind,
                stats[i] if statistic else None, other if statistic else None,
                statistic.task_weight if statistic else 1.0, statistic.independent_weight if statistic else 0.0,
                statistic.scalars() if statistic else None)
            p.copy_(new_p)
            for live, new in zip(states[i], new_state):
                live.copy_(new)
            if statistic:
                stats[i].copy_(new_stat)
    return [p.cpu() for p in params], [s.cpu() for s in stats]


def assert_close_to(actual: list[Tensor], expected: list[Tensor], rtol: float, outliers: float = 0.0) -> None:
    """Within `rtol` of each tensor's scale; a fraction `outliers` may be up to 100× off (where Adam's g + λθ
    cancels, or SI's Δ is a difference of nearby floats)."""
    for a, e in zip(actual, expected, strict=True):
        scale = float(e.abs().max()) or 1.0
        error = (a.double() - e).abs()
        assert float(error.max()) <= 100 * rtol * scale, f"max error {float(error.max()):.3g}, scale {scale:.3g}"
        assert float((error > rtol * scale).double().mean()) <= outliers


def ids(value):
    return value.name if isinstance(value, OptimizerInfo) else str(value)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("info", OPTIMIZERS, ids=ids)
@pytest.mark.parametrize("statistic", STATISTICS, ids=ids)
@pytest.mark.parametrize("penalty", PENALTIES, ids=["no-penalty", "add-penalty", "penalty-in-grad"])
def test_every_backend_against_float64(info, statistic, penalty, device):
    data, stat = problem(), STATISTICS[statistic]
    expected_params, expected_stats = reference(info, stat, penalty, data, info.lr)
    eager = formula_run(info, stat, penalty, data, "eager", info.lr, device)
    assert_close_to(eager[0], expected_params, 1e-5, outliers=0.02)
    assert_close_to(eager[1], expected_stats, 1e-4, outliers=0.05)
    # K = 3 runs, each with its own learning rate and penalty strength, stacked: each slice is its run
    lrs, scales = [info.lr, 0.5 * info.lr, 2 * info.lr], [1.0, 3.0, 0.5]
    stacked_params, stacked_stats = stacked_run(info, stat, penalty, data, lrs, scales, device)
    for k, (lr, scale) in enumerate(zip(lrs, scales)):
        expected = reference(info, stat, penalty, data, lr, scale)
        assert_close_to([p[k] for p in stacked_params], expected[0], 1e-5, outliers=0.02)
        assert_close_to([s[k] for s in stacked_stats], expected[1], 1e-4, outliers=0.05)
    # the first run of the stack equals the per-tensor step bit for bit: one definition, same operations
    for a, b in zip([p[0] for p in stacked_params] + [s[0] for s in stacked_stats], eager[0] + eager[1]):
        assert torch.equal(a, b)
    if device == "cuda":
        compiled = formula_run(info, stat, penalty, data, "compiled", info.lr, device)
        assert_close_to(compiled[0], [p.double() for p in eager[0]], 1e-6, outliers=0.01)
        assert_close_to(compiled[1], [s.double() for s in eager[1]], 1e-5, outliers=0.01)
    elif fused.supported(info.make([nn.Parameter(torch.zeros(1))], info.lr), stat) and native.load() is not None:
        kernel = formula_run(info, stat, penalty, data, "native", info.lr)
        assert_close_to(kernel[0], [p.double() for p in eager[0]], 1e-6, outliers=0.01)
        assert_close_to(kernel[1], [s.double() for s in eager[1]], 1e-5, outliers=0.01)


# on the CPU, a covering set: every optimiser once, each with a different statistic and penalty mode, so that every
# statistic kind and every penalty mode is compiled at least once (each combination compiles kernels of its own:
# the whole product takes minutes); on CUDA, test_every_backend_against_float64 compiles every combination
COMPILED = [(OPTIMIZERS[0], "path", core_step.ADD_PENALTY), (OPTIMIZERS[1], "moment", core_step.NO_PENALTY),
            (OPTIMIZERS[2], "moment", core_step.PENALTY_IN_GRAD), (OPTIMIZERS[3], "none", core_step.ADD_PENALTY),
            (OPTIMIZERS[4], "path-other", core_step.PENALTY_IN_GRAD), (OPTIMIZERS[5], "path-other", core_step.ADD_PENALTY)]


@pytest.mark.parametrize("info,statistic,penalty", COMPILED, ids=lambda v: ids(v))
def test_the_compiled_formula(info, statistic, penalty):
    """torch.compile of the same definition: to rounding of the eager one (compiled and native agree bit for bit
    here, both with a correctly rounded sqrt)."""
    data, stat = problem(1), STATISTICS[statistic]
    eager = formula_run(info, stat, penalty, data, "eager", info.lr)
    compiled = formula_run(info, stat, penalty, data, "compiled", info.lr)
    assert_close_to(compiled[0], [p.double() for p in eager[0]], 1e-6, outliers=0.01)
    assert_close_to(compiled[1], [s.double() for s in eager[1]], 1e-5, outliers=0.01)
    if fused.supported(info.make([nn.Parameter(torch.zeros(1))], info.lr), stat) and native.load() is not None:
        kernel = formula_run(info, stat, penalty, data, "native", info.lr)
        for a, b in zip(kernel[0] + kernel[1], compiled[0] + compiled[1]):
            assert torch.equal(a, b)


@pytest.mark.parametrize("info", OPTIMIZERS[:3], ids=ids)
def test_the_native_kernel_executes_the_formula(info):
    """The kernel's few-ulp differences from the eager formula are torch's sqrt: with the formula's sqrt taken in
    float64 (correctly rounded, as C's sqrtf), the two agree bit for bit."""
    if native.load() is None:
        pytest.skip("no C compiler")
    data, stat = problem(2), STATISTICS["path-other"]
    kernel = formula_run(info, stat, core_step.ADD_PENALTY, data, "native", info.lr)
    sqrt = Tensor.sqrt
    try:
        Tensor.sqrt = lambda t: sqrt(t.double()).to(t.dtype)
        eager = formula_run(info, stat, core_step.ADD_PENALTY, data, "eager", info.lr)
    finally:
        Tensor.sqrt = sqrt
    for a, b in zip(kernel[0] + kernel[1], eager[0] + eager[1]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("penalty", PENALTIES[1:], ids=["add-penalty", "penalty-in-grad"])
def test_the_online_penalty_forms_2p_from_omega_in_the_step(penalty, storage):
    """The online penalty keeps no copy of P: the step forms 2P = Ω·2sc + 2sλ itself. Against float64, and the
    kernel against the formula bit for bit (the formula's sqrt correctly rounded, as above), Ω and θ* stored in
    float32 or bfloat16 (the reference then reads the bf16-rounded values)."""
    info, data, stat = OPTIMIZERS[0], problem(3), STATISTICS["moment"]
    rounded = lambda ts: [t.to(storage).double() for t in ts]  # noqa: E731
    data = Problem(data.params, data.grads, data.others, rounded(data.centre), rounded(data.twice_precision))
    scalars = (2.5, 0.3)
    eager = formula_run(info, stat, penalty, data, "eager", info.lr, penalty_scalars=scalars, storage=storage)
    expected = reference(info, stat, penalty, data, info.lr, *scalars)
    assert_close_to(eager[0], expected[0], 1e-5, outliers=0.02)
    assert_close_to(eager[1], expected[1], 1e-4, outliers=0.05)
    plain = formula_run(info, stat, penalty, data, "eager", info.lr, storage=storage)
    assert max(float((a - b).abs().max()) for a, b in zip(eager[0], plain[0])) > 1e-4  # the scalars matter
    if native.load() is None:
        pytest.skip("no C compiler")
    kernel = formula_run(info, stat, penalty, data, "native", info.lr, penalty_scalars=scalars, storage=storage)
    sqrt = Tensor.sqrt
    try:
        Tensor.sqrt = lambda t: sqrt(t.double()).to(t.dtype)
        eager = formula_run(info, stat, penalty, data, "eager", info.lr, penalty_scalars=scalars, storage=storage)
    finally:
        Tensor.sqrt = sqrt
    for a, b in zip(kernel[0] + kernel[1], eager[0] + eager[1]):
        assert torch.equal(a, b)


# extension points: an optimiser and a statistic kind added from outside, each one definition plus its registration

class SignSGD(torch.optim.Optimizer):
    """A toy optimiser: θ ← θ − η·sign(g)."""

    def __init__(self, params, lr: float):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign(), alpha=-group["lr"])


def sign_sgd(param: Tensor, grad: Tensor, *, lr) -> tuple[Tensor, tuple]:
    return param - lr * grad.sign(), ()


SIGN_SGD = optimizers.OptimizerUpdate("sign-sgd", SignSGD, sign_sgd, (), lambda group, t: {"lr": group["lr"]},
                                      counts_steps=False)


def absolute_path(state: Tensor, u: Tensor, delta: Tensor) -> Tensor:
    return state + (u * delta).abs()


class AbsolutePath(TrajectoryMeasure):
    """A toy trajectory measure of the toy kind: ω = Σ_t |g_t ⊙ Δ_t|."""

    name = "abs-path"

    def step_statistic(self) -> StepStatistic:  # noqa: D102
        return StepStatistic("abs-path")

    def task_importance(self, params, sample):  # noqa: D102
        return [s.clone() for s in self.state]


@pytest.fixture
def registered():
    optimizers.register(SIGN_SGD)
    kind = register_kind(Kind("abs-path", absolute_path, needs_step=True))
    try:
        yield
    finally:
        optimizers.unregister(SIGN_SGD)
        KINDS.pop(kind.name)


def toy_run(backend: str | None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    reg = clreg.Regularizer(model, AbsolutePath(), c=1.0)
    for task in range(2):
        optimizer = SignSGD(model.parameters(), lr=1e-2)
        for _ in range(5):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(torch.randn(16, 4)), torch.randint(0, 3, (16,))).backward()
            reg.step(optimizer, backend=backend)
        omega = reg.end_task()
    return [p.detach() for p in model.parameters()], list(omega.values())


def test_a_registered_toy_optimiser_and_statistic_run_on_every_backend(registered):
    """Registered here (one definition each, plus its registration), the toy optimiser and statistic kind run
    through the Regularizer on the formula's backends and equal its own step() with the formulas around it;
    the native kernel, which does not know them, is not chosen."""
    by_torch, eager, compiled, chosen = toy_run("torch"), toy_run("eager"), toy_run("compiled"), toy_run(None)
    for a, b, c, d in zip(*(run[0] + run[1] for run in (by_torch, eager, compiled, chosen))):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(c, a, rtol=1e-6, atol=1e-7)
        assert torch.equal(d, a)  # the default: "torch" (no native kernel for a toy)
    with pytest.raises(ValueError, match="'native' step backend runs Adam and AdamW"):
        toy_run("native")
    # and stacked: K = 2 runs at two learning rates, each slice its run
    params, grads = torch.randn(2, 5), torch.randn(2, 5)
    scalars = core_step.stacked_scalars([{"lr": 0.1}, {"lr": 0.2}], params)
    stacked, _, _ = core_step.tensor_step(sign_sgd, params, grads, (), scalars)
    for k, lr in enumerate((0.1, 0.2)):
        assert torch.equal(stacked[k], sign_sgd(params[k], grads[k], lr=lr)[0])


def test_unregistered_or_uncovered_optimisers_take_their_own_step():
    p = nn.Parameter(torch.randn(3))
    p.grad = torch.randn(3)
    assert optimizers.lookup(torch.optim.Adam([p])) is optimizers.ADAM
    assert optimizers.lookup(torch.optim.Adam([p], amsgrad=True)) is None
    assert optimizers.lookup(torch.optim.RMSprop([p])) is None
    optimizer = torch.optim.SGD([p], lr=0.1)
    optimizer.register_step_pre_hook(lambda *a: None)
    assert optimizers.lookup(optimizer) is None  # its hooks must run: its own step()
    assert fused.supported(torch.optim.Adam([p])) == (native.load() is not None)
    assert not fused.supported(torch.optim.SGD([p], lr=0.1))
    q = nn.Parameter(torch.randn(3, dtype=torch.double))
    q.grad = torch.randn(3, dtype=torch.double)
    assert not fused.supported(torch.optim.Adam([q]))
    with pytest.raises(ValueError, match="step backend is one of"):
        clreg.Regularizer(nn.Linear(2, 2), "si", step_backend="fast")


def test_the_registries_refuse_a_name_twice():
    with pytest.raises(ValueError, match="registered"):
        optimizers.register(optimizers.OptimizerUpdate("adam2", torch.optim.Adam, formulas.adam, (), lambda g, t: {}))
    with pytest.raises(ValueError, match="not yet registered"):
        register_kind(Kind("path", formulas.path, needs_step=True))


def test_a_registered_optimiser_becomes_a_run_setting_and_steps_vectorised_runs():
    """Registered before the run settings are read (as a plugin would), the toy optimiser is a `clreg run
    --optimizer` choice, and a vectorised job of it through the stacked step equals its runs alone (eager)."""
    script = '''
import torch
from clreg.core import optimizers

class SignSGD(torch.optim.Optimizer):
    def __init__(self, params, lr):
        super().__init__(params, {"lr": lr})

def sign_sgd(param, grad, *, lr):
    return param - lr * grad.sign(), ()

optimizers.register(optimizers.OptimizerUpdate("sign-sgd", SignSGD, sign_sgd, (), lambda group, t: {"lr": group["lr"]},
                                               counts_steps=False, build=lambda params, lr, s: SignSGD(params, lr)))
from clreg.train.config import OPTIONS, RunConfig
from clreg.train.loop import Trainer, load_benchmark
from clreg.vectorized.trainer import VectorizedTrainer
assert "sign-sgd" in next(o for o in OPTIONS if o.name == "optimizer").choices
configs = [RunConfig(benchmark="permuted-digits", method="si", c=c, optimizer="sign-sgd", lr=1e-3, tasks=2, epochs=1,
                     hidden=[16, 16], device="cpu") for c in (0.5, 2.0)]
job = VectorizedTrainer(configs, stacked_step=True)
for member in job.members:
    member.reg.step_backend = "eager"
job.run()
for config, member in zip(configs, job.members):
    alone = Trainer(config, load_benchmark(config), progress=False)
    alone.reg.step_backend = "eager"
    alone.run()
    assert all(torch.equal(p, q) for p, q in zip(alone.model.parameters(), member.model.parameters()))
print("SIGN-SGD OK")
'''
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert "SIGN-SGD OK" in done.stdout, done.stdout[-2000:] + done.stderr[-3000:]
