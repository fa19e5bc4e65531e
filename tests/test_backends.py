"""Each trajectory statistic, declared once, gives the paper's numbers on every backend: the native fused
step (CPU float32 with Adam), the formula per tensor ("eager") and the optimiser's own step between the
formulas ("torch") on float32, float64 and non-contiguous (channels-last) parameters, and CUDA when there is
one. The reference is the statistic written out per step in float64 from the recorded g_t, g'_t and θ_t."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import clreg
from clreg.core import native

STEPS = 6
METHODS = [("si", {}), ("siu", {}), ("sib", {}), ("sos", {}), ("sos", {"alpha": 1.0}), ("sos", {"alpha": 0.3})]


def backends():
    out = [pytest.param("native", torch.float32, "cpu", marks=pytest.mark.skipif(native.load() is None,
                                                                                  reason="no C compiler")),
           ("torch", torch.float32, "cpu"), ("torch", torch.float64, "cpu"), ("channels-last", torch.float32, "cpu"),
           ("eager", torch.float32, "cpu"), ("eager", torch.float64, "cpu")]
    return out + [pytest.param(backend, dtype, "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                                 reason="no CUDA device"))
                  for dtype in (torch.float32, torch.float64) for backend in ("torch", "eager")]


def make_model(backend, dtype, device):
    torch.manual_seed(0)
    if backend == "channels-last":
        model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
        model = model.to(memory_format=torch.channels_last)
        assert not model[0].weight.is_contiguous()
        x = torch.randn(2 * STEPS, 16, 2, 5, 5)
    else:
        model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
        x = torch.randn(2 * STEPS, 16, 5)
    y = torch.randint(0, 3, (2 * STEPS, 16))
    return model.to(device, dtype), x.to(device, dtype), y.to(device)


def reference(method, options, records):
    """The statistic from the recorded (g, g', θ_t, θ_{t+1}) in float64, by the paper's formulas."""
    a, b = {"si": (1, 0), "siu": (0, 1), "sib": (1, -1), "sos": (1, -options.get("alpha", 0.0))}[method]
    state = [torch.zeros_like(t, dtype=torch.float64) for t in records[0][2]]
    for g, g2, before, after in records:
        for i, s in enumerate(state):
            u = a * g[i].double() + b * g2[i].double()
            if method == "sos":
                s.mul_(0.999).add_(0.001 * u * u)
            else:
                s.sub_(u * (after[i].double() - before[i].double()))
    return state


@pytest.mark.parametrize("backend,dtype,device", backends())
@pytest.mark.parametrize("method,options", METHODS, ids=str)
def test_statistic_matches_the_formula_on_every_backend(method, options, backend, dtype, device):
    model, x, y = make_model(backend, dtype, device)
    reg = clreg.Regularizer(model, method, c=0.3, **options)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    step_backend = "torch" if backend == "channels-last" else backend
    with torch.no_grad():  # a consolidated first task, so that the penalty (not in g_t) is active
        reg.penalty_term.consolidate([torch.rand_like(p) for p in reg.params], reg.params)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    reg.begin_task()
    records = []
    for t in range(STEPS):
        loss = lambda i: F.cross_entropy(model(x[i]), y[i])  # noqa: E731
        g = [gi.clone() for gi in torch.autograd.grad(loss(2 * t), reg.params)]
        g2 = [gi.clone() for gi in torch.autograd.grad(loss(2 * t + 1), reg.params)]
        before = [p.detach().clone() for p in reg.params]
        optimizer.zero_grad()
        loss(2 * t).backward()
        if reg.measure.needs_independent_gradient:
            reg.before_step(independent_loss=lambda t=t: loss(2 * t + 1))
        reg.step(optimizer, backend=step_backend)
        records.append((g, g2, before, [p.detach().clone() for p in reg.params]))
    expected = reference(method, options, records)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    for got, want in zip(reg.measure.state, expected):
        assert got.dtype == dtype and got.device.type == device
        scale = float(want.abs().max())
        assert float((got.double() - want).abs().max()) <= tolerance * scale + 1e-30
    assert reg.measure.steps == STEPS


def train_two_tasks(flow, log):
    """SI with Adam over two tasks; `flow` says how the step is finished; `log` evaluates R every step."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 40), nn.ReLU(), nn.Linear(40, 4))
    reg = clreg.Regularizer(model, "si", c=5.0)
    logged = []
    for task in range(2):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        x, y = torch.randn(64, 6), torch.randint(0, 4, (64,))
        for _ in range(20):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x + task), y)
            if flow == "penalty-in-loss":
                loss = loss + reg.penalty()
            loss.backward()
            if log:
                logged.append(reg.penalty().item())
            if flow == "step":
                reg.step(optimizer)
            else:
                if flow == "add_penalty_gradient":
                    reg.add_penalty_gradient()
                optimizer.step()
                if log:
                    logged.append(reg.penalty().item())  # after the step too, at θ_{t+1}
                reg.after_step()
        reg.end_task()
    return [p.detach() for p in model.parameters()], reg.omega, logged


@pytest.mark.parametrize("flow", ["step", "add_penalty_gradient", "penalty-in-loss"])
def test_logging_the_penalty_changes_nothing(flow):
    params, omega, _ = train_two_tasks(flow, log=False)
    params_logged, omega_logged, logged = train_two_tasks(flow, log=True)
    assert max(logged) > 0  # the penalty was active and was logged
    for a, b in zip(params, params_logged):
        assert torch.equal(a, b)
    for name in omega:
        assert torch.equal(omega[name], omega_logged[name])


@pytest.mark.parametrize("mode", ["online", "separate", "debiased"])
def test_the_prior_acts_from_the_first_task(mode):
    model = nn.Linear(3, 2)
    reg = clreg.Regularizer(model, "si", c=1.0, prior=0.5, penalty=mode)
    expected = 0.5 * sum(float(p.detach().square().sum()) for p in model.parameters())
    assert reg.penalty().item() == pytest.approx(expected, rel=1e-6)
    reg.penalty().backward()
    for p in model.parameters():
        torch.testing.assert_close(p.grad, 2 * 0.5 * p.detach())
    assert clreg.Regularizer(nn.Linear(3, 2), "si", c=1.0, penalty=mode).penalty().item() == 0.0


class KnownImportance(clreg.ImportanceMeasure):
    """ω of each task given in advance (the exact curvature of a quadratic task)."""

    name = "known"

    def __init__(self, values):
        self.values = list(values)

    def task_importance(self, params, sample):  # noqa: D102
        return [self.values.pop(0)]


@pytest.mark.parametrize("mode", ["online", "debiased"])
def test_proxies_equal_the_loss_rise_on_quadratic_tasks_trained_by_gradient_descent(mode):
    """Task t's loss Σ F_t (θ − μ_t)², trained with the penalty (and the prior from task 1 on) by gradient
    descent to convergence, ω = F_t, c = 1: the Laplace approximation is exact, so every task's proxy rise
    equals its true loss rise (SPEC §4)."""
    torch.manual_seed(2)
    n, tasks, prior = 6, 4, 0.3
    fishers = [torch.rand(n, dtype=torch.double) + 0.1 for _ in range(tasks)]
    optima = [torch.randn(n, dtype=torch.double) for _ in range(tasks)]
    theta = nn.Parameter(torch.randn(n, dtype=torch.double))
    reg = clreg.Regularizer(nn.ParameterList([theta]), KnownImportance(fishers), c=1.0, prior=prior, penalty=mode,
                            keep_tasks=True)
    losses = [lambda f=f, m=m: (f * (theta - m).square()).sum() for f, m in zip(fishers, optima)]
    optimizer = torch.optim.SGD([theta], lr=0.05)
    at_end, proxies_at_end = [], []
    for t in range(tasks):
        for _ in range(3000):
            optimizer.zero_grad()
            (losses[t]() + reg.penalty()).backward()
            optimizer.step()
            reg.after_step()
        assert float(theta.grad.abs().max()) < 1e-12  # converged
        reg.end_task()
        at_end.append(losses[t]().item())
        proxies_at_end.append(reg.proxy_losses()[t])
    proxies = reg.proxy_losses()
    for t in range(tasks - 1):
        rise = losses[t]().item() - at_end[t]
        assert rise > 1e-3
        assert proxies[t] - proxies_at_end[t] == pytest.approx(rise, rel=1e-9)
