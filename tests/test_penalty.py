"""The shared penalty R(θ) = c Σ Ω (θ − θ*)²: its analytic gradient, Ω and the anchor (SPEC §1)."""
import torch
from torch import nn

from clreg import QuadraticPenalty

from clreg import Regularizer


def test_analytic_gradient_equals_autograd_of_r():
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(3, 4, dtype=torch.double)), nn.Parameter(torch.randn(5, dtype=torch.double))]
    penalty = QuadraticPenalty(params, c=0.7)
    omegas = [torch.rand_like(p) for p in params]
    penalty.consolidate(omegas, params)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p))
    value = penalty(params)
    value.backward()
    anchors = penalty.anchor
    reference = sum(0.7 * (o * (p - a).square()).sum() for o, p, a in zip(omegas, params, anchors))
    expected = torch.autograd.grad(reference, params)
    assert value.item() == reference.item() or abs(value.item() - reference.item()) < 1e-12 * abs(reference.item())
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-12, atol=0)


def test_omega_accumulates_and_anchor_follows_task_end():
    model = nn.Linear(3, 2)
    reg = Regularizer(model, "weight-magnitude", c=1.0)
    assert reg.penalty().item() == 0.0  # nothing consolidated yet
    ends = []
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ends.append({n: p.detach().clone() for n, p in model.named_parameters()})
        reg.end_task()
    for name in ("weight", "bias"):
        torch.testing.assert_close(reg.omega[name], sum(e[name].abs() for e in ends))
        torch.testing.assert_close(reg.anchor[name], ends[-1][name])


def test_l2_grows_and_l2_const_stays():
    model = nn.Linear(2, 2)
    grows, const = Regularizer(model, "l2", c=1.0), Regularizer(model, "l2-const", c=1.0)
    for _ in range(3):
        grows.end_task()
        const.end_task()
    assert torch.all(grows.omega["weight"] == 3) and torch.all(const.omega["weight"] == 1)


def test_decay_and_heads_are_not_regularised():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 2))
    reg = Regularizer(model, "l2", c=1.0, heads=["1"], decay=0.5)
    assert reg.names == ["0.weight", "0.bias"]
    reg.end_task()
    reg.end_task()
    assert torch.all(reg.omega["0.weight"] == 1.5)  # 0.5 · 1 + 1
    with torch.no_grad():
        model[1].weight.add_(1.0)
    reg.penalty().backward()
    assert model[1].weight.grad is None  # the head is not in the penalty


def test_finetune_has_no_penalty():
    model = nn.Linear(2, 2)
    reg = Regularizer(model, "finetune", c=5.0)
    assert reg.end_task() is None
    with torch.no_grad():
        model.weight.add_(1.0)
    assert reg.penalty().item() == 0.0
