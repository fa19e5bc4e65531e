"""The shared penalty R(θ) = c Σ Ω (θ − θ*)²: its analytic gradient, Ω and the anchor (SPEC §1)."""
import pytest
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


def _copies_held(reg) -> int:
    """Parameter-sized tensors the regulariser holds (its penalty's and its own, not the parameters themselves),
    counted by identity, in copies of the parameters."""
    sized = {p.numel() for p in reg.params}
    own = {id(p) for p in reg.params}
    seen = {}
    for owner in (reg, reg.penalty_term, reg.measure):
        for value in vars(owner).values():
            for t in value if isinstance(value, (list, tuple)) else value.values() if isinstance(value, dict) else [value]:
                if isinstance(t, torch.Tensor) and t.numel() in sized and t.numel() > 1 and id(t) not in own:
                    seen[id(t)] = t
    return len(seen) // len(reg.params)


def trained_two_tasks(method: str, c: float = 1.0, **options):
    """A small MLP trained on two tasks through reg.step(Adam), each ended on its inputs: (model, reg, x, y, Adam)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    reg = Regularizer(model, method, c=c, **options)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    for _ in range(2):
        for _ in range(3):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            reg.step(optimizer)
        reg.end_task(x)
    return model, reg, x, y, optimizer


def test_the_fused_step_holds_only_what_online_ewc_needs():
    """Online EWC trained through reg.step(Adam) holds Ω and θ* only: the step forms 2sP = Ω·2sc + 2sλ on the fly,
    the scratch for R's value, the ∇R buffer and the per-step scratch are made only by the paths that use them,
    and the last task's ω is kept only when asked (keep_importance)."""
    model, reg, x, y, optimizer = trained_two_tasks("fisher")
    assert reg.penalty_term._diff is None and reg.penalty_term._grad is None
    assert _copies_held(reg) == 2, _copies_held(reg)
    optimizer.zero_grad()
    (torch.nn.functional.cross_entropy(model(x), y) + reg.penalty()).backward()
    for g, p, m, tp in zip(reg.penalty_term.grad, reg.params, reg.penalty_term.anchor, reg.penalty_term.twice_precision()):
        torch.testing.assert_close(g, tp * (p.detach() - m))


def test_bf16_storage_holds_one_copy_and_steps_as_the_formula_with_rounded_state():
    """storage="bf16": Ω and θ* in bfloat16 (one float32 copy's worth together), the step on the formula backend in
    float32; ∇R and R equal float64 with Ω and θ* rounded to bf16, and the fp32-stored run differs by that rounding."""
    model, reg, *_ = trained_two_tasks("fisher", c=3.0, storage="bf16")
    assert all(o.dtype == torch.bfloat16 for o in reg.omega.values())
    assert all(a.dtype == torch.bfloat16 for a in reg.anchor.values())
    assert sum(o.numel() * o.element_size() * 2 for o in reg.omega.values()) == sum(
        p.numel() * p.element_size() for p in reg.params)
    theta = [p.detach().double() for p in reg.params]
    omega = [o.double() for o in reg.penalty_term.omega]
    anchor = [a.double() for a in reg.penalty_term.anchor]
    expected_grad = [2 * 3.0 * o * (t - a) for o, t, a in zip(omega, theta, anchor)]
    for g, e in zip(reg.penalty_term.gradient(reg.params), expected_grad):
        torch.testing.assert_close(g.double(), e, rtol=1e-5, atol=1e-7)
    expected = sum(float((3.0 * o * (t - a).square()).sum()) for o, t, a in zip(omega, theta, anchor))
    assert abs(float(reg.penalty()) - expected) <= 1e-5 * abs(expected)
    plain = trained_two_tasks("fisher", c=3.0)[1]
    assert plain.penalty_term.omega[0].dtype == torch.float32
    for o, p in zip(reg.penalty_term.omega, plain.penalty_term.omega):
        torch.testing.assert_close(o.float(), p, rtol=2 ** -7, atol=1e-6)  # one bf16 rounding apart


def test_bf16_storage_is_refused_where_per_task_terms_are_kept():
    model = nn.Linear(3, 2)
    for options in ({"penalty": "separate"}, {"keep_tasks": True}):
        with pytest.raises(ValueError, match="online penalty without per-task terms"):
            Regularizer(model, "fisher", storage="bf16", **options)
    with pytest.raises(ValueError, match="storage must be a torch dtype or one of fp32, bf16"):
        Regularizer(model, "fisher", storage="half")


@pytest.mark.parametrize("method, copies", [("si", 4), ("sos", 3), ("mas", 2)])
def test_what_each_measure_holds_on_the_fused_path(method, copies):
    """Through reg.step(Adam): SI holds Ω, θ*, its path integral and θ_start (θ_t for Δ_t is θ_start, read in place
    until a step on the foreach path needs a later one); SOS Ω, θ* and its moment; MAS Ω and θ*."""
    reg = trained_two_tasks(method)[1]
    assert _copies_held(reg) == copies, _copies_held(reg)


@pytest.mark.parametrize("shape", [(1,), (3, 5), ()])
def test_a_checkpoint_whose_state_does_not_fit_a_parameter_is_refused_by_name(shape):
    """A state tensor of another shape would be broadcast by copy_ ((1,) and () into a (3,)-bias: every entry the
    same, silently) or fail deep inside; Regularizer.load_state_dict names the parameter and both shapes."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    reg = Regularizer(net, "si", c=1.0)
    state = reg.state_dict()
    state["penalty"]["omega"][1] = torch.ones(shape)  # the first layer's bias, shape (3,)
    with pytest.raises(ValueError, match=r"parameter '0\.bias' has shape \[.*\], but the parameter's shape is \[3\]"):
        reg.load_state_dict(state)
    state["penalty"]["omega"][1] = torch.full((3,), 2.0)  # the right shape loads
    reg.load_state_dict(state)
    assert reg.omega["0.bias"].tolist() == [2.0, 2.0, 2.0]
