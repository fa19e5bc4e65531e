"""SI, SIU, SIB and SOS on a hand-computable trajectory (SGD on a quadratic), and g_t's definition."""
import math

import pytest
import torch
from torch import nn

from clreg import Regularizer
from clreg.importance import SynapticIntelligence

TARGETS = [[1.0, -2.0], [0.5, 3.0], [-1.0, 1.0], [2.0, 0.0]]  # m_t of the training batches
OTHER = [[0.0, 1.0], [1.5, -1.0], [0.5, 0.5], [-2.0, 2.0]]  # m'_t of the independent batches
LR = 0.5


class Point(nn.Module):
    def __init__(self):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([0.0, 0.0], dtype=torch.double))


def loss(model, m):
    """L(θ; batch with target m) = ½ ‖θ − m‖², gradient θ − m."""
    return 0.5 * (model.theta - torch.tensor(m, dtype=torch.double)).square().sum()


def train(reg, model, targets=TARGETS, other=OTHER):
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for m, m2 in zip(targets, other):
        opt.zero_grad()
        (loss(model, m) + reg.penalty()).backward()
        reg.before_step(independent_loss=lambda m2=m2: loss(model, m2))
        opt.step()
        reg.after_step()


def hand_trajectory(alpha_other=None):
    """θ_t and the gradients g_t, g'_t of the SGD run without penalty, by hand."""
    theta, thetas, g, g2 = [0.0, 0.0], [[0.0, 0.0]], [], []
    for m, m2 in zip(TARGETS, OTHER):
        gt = [theta[i] - m[i] for i in range(2)]
        g.append(gt)
        g2.append([theta[i] - m2[i] for i in range(2)])
        theta = [theta[i] - LR * gt[i] for i in range(2)]
        thetas.append(theta)
    return thetas, g, g2


@pytest.mark.parametrize("method", ["si", "siu", "sib"])
def test_si_family_matches_formula(method):
    model = Point()
    reg = Regularizer(model, method, c=1.0, xi=0.1, clip=False)
    train(reg, model)
    omega = reg.end_task()["theta"]
    thetas, g, g2 = hand_trajectory()
    for i in range(2):
        estimate = {"si": lambda t: g[t][i], "siu": lambda t: g2[t][i], "sib": lambda t: g[t][i] - g2[t][i]}[method]
        s = sum(-estimate(t) * (thetas[t + 1][i] - thetas[t][i]) for t in range(len(TARGETS)))
        expected = s / ((thetas[-1][i] - thetas[0][i]) ** 2 + 0.1)
        assert omega[i].item() == pytest.approx(expected, rel=1e-12)


def test_si_equals_siu_plus_sib():
    omegas = {}
    for method in ("si", "siu", "sib"):
        model = Point()
        reg = Regularizer(model, method, c=1.0, xi=0.1, clip=False)
        train(reg, model)
        omegas[method] = reg.end_task()["theta"]
    torch.testing.assert_close(omegas["si"], omegas["siu"] + omegas["sib"], rtol=1e-12, atol=1e-15)


def test_si_clips_negative_importance():
    model = Point()
    reg = Regularizer(model, "siu", c=1.0, xi=0.1)
    train(reg, model)
    unclipped_model = Point()
    unclipped = Regularizer(unclipped_model, "siu", c=1.0, xi=0.1, clip=False)
    train(unclipped, unclipped_model)
    raw = unclipped.end_task()["theta"]
    assert (raw < 0).any(), "the test trajectory must produce a negative SIU importance"
    torch.testing.assert_close(reg.end_task()["theta"], raw.clamp_min(0))


@pytest.mark.parametrize("alpha,bias_correction", [(0.0, True), (0.0, False), (0.5, True)])
def test_sos_matches_formula(alpha, bias_correction):
    model = Point()
    reg = Regularizer(model, "sos", c=1.0, alpha=alpha, bias_correction=bias_correction, beta2=0.9)
    train(reg, model)
    omega = reg.end_task()["theta"]
    _, g, g2 = hand_trajectory()
    steps = len(TARGETS)
    for i in range(2):
        v = sum(0.1 * 0.9 ** (steps - 1 - t) * (g[t][i] - alpha * g2[t][i]) ** 2 for t in range(steps))
        if bias_correction:
            v /= 1 - 0.9 ** steps
        assert omega[i].item() == pytest.approx(math.sqrt(v), rel=1e-12)


def test_sos_split_takes_g_and_g_prime_from_the_halves():
    """With split, g = ∇L(first half), g' = ∇L(second half); the step uses their mean."""
    model = Point()
    reg = Regularizer(model, "sos", c=1.0, alpha=1.0, split=True, beta2=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for m, m2 in zip(TARGETS, OTHER):
        opt.zero_grad()
        reg.backward_split(loss(model, m), loss(model, m2))
        opt.step()
        reg.after_step()
    omega = reg.end_task()["theta"]
    theta, v = [0.0, 0.0], [0.0, 0.0]
    for m, m2 in zip(TARGETS, OTHER):
        for i in range(2):
            ga, gb = theta[i] - m[i], theta[i] - m2[i]
            v[i] = 0.9 * v[i] + 0.1 * (ga - gb) ** 2
        theta = [theta[i] - LR * 0.5 * ((theta[i] - m[i]) + (theta[i] - m2[i])) for i in range(2)]
    expected = [math.sqrt(vi / (1 - 0.9 ** len(TARGETS))) for vi in v]
    torch.testing.assert_close(omega, torch.tensor(expected, dtype=torch.double), rtol=1e-12, atol=0)


class Recorder(SynapticIntelligence):
    """SI that also records the g_t it is given."""

    def begin_task(self, params):
        super().begin_task(params)
        self.seen = []

    def accumulate(self, task_grads, independent, delta):
        self.seen.append([g.clone() for g in task_grads])
        super().accumulate(task_grads, independent, delta)


def test_si_gradient_is_task_loss_only_while_penalty_is_on():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    recorder = Recorder(xi=0.1)
    reg = Regularizer(model, recorder, c=10.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    with torch.no_grad():  # a first "task": Ω > 0 and θ* = current θ
        reg.penalty_term.consolidate([torch.rand_like(p) for p in reg.params], reg.params)
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # away from θ*, so that ∇R ≠ 0
    reg.begin_task()
    for _ in range(3):
        task_loss = nn.functional.cross_entropy(model(x), y)
        expected = torch.autograd.grad(task_loss, reg.params)
        opt.zero_grad()
        penalty = reg.penalty()
        assert penalty.item() > 0
        (nn.functional.cross_entropy(model(x), y) + penalty).backward()
        opt.step()
        reg.after_step()
        for got, want in zip(recorder.seen[-1], expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_trajectory_measures_need_their_hooks():
    model = Point()
    reg = Regularizer(model, "siu", c=1.0)
    (loss(model, [1.0, 1.0]) + reg.penalty()).backward()
    with pytest.raises(ValueError, match="independent"):
        reg.after_step()
    with pytest.raises(ValueError, match="auto"):
        Regularizer(Point(), "sos", alpha="auto")


def test_fast_penalty_path_gives_the_same_gradients_and_importance():
    """add_penalty_gradient() after the task loss's backward ≡ penalty() in the loss."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    results = []
    for fast in (False, True):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
        reg = Regularizer(model, "si", c=3.0)
        reg.penalty_term.consolidate([torch.rand_like(p) for p in reg.params], reg.params)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p, generator=torch.Generator().manual_seed(2)))
        reg.begin_task()
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(4):
            opt.zero_grad()
            if fast:
                nn.functional.cross_entropy(model(x), y).backward()
                reg.add_penalty_gradient()
            else:
                (nn.functional.cross_entropy(model(x), y) + reg.penalty()).backward()
            grads = [p.grad.clone() for p in model.parameters()]
            opt.step()
            reg.after_step()
        results.append((grads, reg.end_task()))
    (slow_grads, slow_omega), (fast_grads, fast_omega) = results
    for a, b in zip(slow_grads, fast_grads):
        torch.testing.assert_close(a, b)
    for name in slow_omega:
        torch.testing.assert_close(slow_omega[name], fast_omega[name])


@pytest.mark.parametrize("b", [2, 16, 256, 2048])
def test_auto_alpha_makes_the_second_moment_proportional_to_the_empirical_fisher(b):
    """E[(g − αg')²] = (1−α)²μ² + (1+α²)σ²/b ∝ μ² + σ² (empirical Fisher) iff b(1−α)² = 1 + α²."""
    from clreg.importance import auto_alpha

    alpha = auto_alpha(b)
    assert 0 < alpha < 1
    assert b * (1 - alpha) ** 2 == pytest.approx(1 + alpha ** 2, rel=1e-12)
