"""The Regularizer's step on the formula backends (the native kernel's one pass, the eager formula) against the
"torch" backend (torch.optim.Adam's own step, add_penalty_gradient and after_step), through realistic flows:
split SOS, the penalty in the loss, dropout-free g_t, heads left out."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import clreg
from clreg.core import fused
from clreg.core import native

pytestmark = pytest.mark.skipif(native.load() is None, reason="no C compiler: the fused step is unavailable")


def model_and_data(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 300), nn.ReLU(), nn.Linear(300, 120), nn.ReLU(), nn.Linear(120, 4))
    tasks = [(torch.randn(64, 6), torch.randint(0, 4, (64,))) for _ in range(2)]
    return model, tasks


def one_step(model, reg, optimizer, x, y, penalty_in_loss, backend=None):
    optimizer.zero_grad(set_to_none=True)
    if reg.split:
        reg.backward_split(F.cross_entropy(model(x[:32]), y[:32]), F.cross_entropy(model(x[32:]), y[32:]))
    else:
        loss = F.cross_entropy(model(x[:32]), y[:32])
        (loss + reg.penalty() if penalty_in_loss else loss).backward()
        if reg.measure.needs_independent_gradient:
            reg.before_step(independent_loss=lambda: F.cross_entropy(model(x[32:]), y[32:]))
    reg.step(optimizer, backend=backend)


def state_of(model, reg, optimizer):
    """What a step changes: parameters with Adam's moments, and the measure's statistic."""
    adam = [t for p in model.parameters() for t in (optimizer.state[p]["exp_avg"], optimizer.state[p]["exp_avg_sq"])]
    statistic = getattr(reg.measure, "state", [])
    return [p.detach() for p in model.parameters()] + adam, list(statistic)


def assert_all_close(actual, expected, rtol, outliers=0.0):
    """Equal to `rtol` of each tensor's scale; a fraction `outliers` of elements may differ up to 100×
    that (elements whose input cancelled: Adam's g + wd·θ ≈ 0 amplifies a one-ulp difference)."""
    for a, e in zip(actual, expected, strict=True):
        scale = float(e.abs().max())
        error = (a - e).abs()
        assert float(error.max()) <= 100 * rtol * scale, f"max error {float(error.max()):.3g}, scale {scale:.3g}"
        wrong = error > rtol * scale
        assert float(wrong.float().mean()) <= outliers, f"{int(wrong.sum())} elements differ"


def compare_along(backend, method, make_opt, penalty_in_loss=False, outliers=0.0, **options):
    """Two tasks of 15 steps on `backend` (None: the default, the native kernel here); before every step, a copy
    of everything takes the same step on the "torch" backend (torch's own Adam between the penalty and the
    statistic), and the two results must agree (no chaotic drift accumulates)."""
    model, tasks = model_and_data()
    reg = clreg.Regularizer(model, method, c=0.5, heads=["4"], **options)
    for x, y in tasks:
        optimizer = make_opt(model.parameters())
        for step in range(15):
            twin = copy.deepcopy((model, reg, optimizer))
            assert fused.supported(optimizer) or step == 0  # no gradient yet at step 0: nothing to fuse
            one_step(model, reg, optimizer, x, y, penalty_in_loss, backend)
            one_step(*twin, x, y, penalty_in_loss, "torch")
            (params, statistic), (params_ref, statistic_ref) = state_of(model, reg, optimizer), state_of(*twin)
            assert_all_close(params, params_ref, 1e-6, outliers)
            # SI's −g⊙Δ: Δ = θ_{t+1} − θ_t is a difference of nearby floats, so one ulp of θ moves it by
            # far more than one ulp of the product; the statistic is compared at 1e-5 of its scale
            assert_all_close(statistic, statistic_ref, 1e-5)
        twin = copy.deepcopy(reg)
        omega = reg.end_task(x)
        if omega is not None:
            assert_all_close(list(omega.values()), list(twin.end_task(x).values()), 1e-6)


OPTIMIZERS = {
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "adam-l2": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.1),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
}
METHODS = [("si", {}), ("siu", {}), ("sib", {}), ("sos", {}), ("sos", {"alpha": 1.0}),
           ("sos", {"alpha": "auto", "split": True, "batch_size": 64}), ("ewc", {}), ("finetune", {})]


@pytest.mark.parametrize("backend", [None, "eager"])
@pytest.mark.parametrize("method,options", METHODS, ids=lambda v: str(v))
def test_fused_step_equals_the_unfused_path(backend, method, options):
    compare_along(backend, method, OPTIMIZERS["adam"], **options)


@pytest.mark.parametrize("backend", [None, "eager"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("penalty_in_loss", [False, True])
def test_fused_adam_variants_and_penalty_in_the_loss(backend, name, penalty_in_loss):
    outliers = 1e-4 if name == "adam-l2" else 0.0  # coupled weight decay: g + wd·θ can cancel
    compare_along(backend, "si", OPTIMIZERS[name], penalty_in_loss=penalty_in_loss, outliers=outliers)


def test_optimizer_state_stays_compatible_with_torch_adam():
    """After fused steps, torch's own Adam continues from the same state as if it had done them."""
    model, tasks = model_and_data(2)
    reference = copy.deepcopy(model)
    x, y = tasks[0]
    reg = clreg.Regularizer(model, "finetune")
    opt, opt_ref = torch.optim.Adam(model.parameters(), lr=1e-2), torch.optim.Adam(reference.parameters(), lr=1e-2)
    for step in range(10):
        for m, o in ((model, opt), (reference, opt_ref)):
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
        reg.step(opt) if step < 5 else opt.step()
        opt_ref.step()
    assert_all_close([p.detach() for p in model.parameters()], [p.detach() for p in reference.parameters()], 1e-5)
    assert float(opt.state[next(model.parameters())]["step"]) == 10


def test_mixing_fused_and_unfused_steps_in_a_task_is_refused():
    model, tasks = model_and_data(3)
    x, y = tasks[0]
    reg = clreg.Regularizer(model, "si", c=1.0)
    opt = torch.optim.Adam(model.parameters())
    F.cross_entropy(model(x), y).backward()
    reg.step(opt)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    with pytest.raises(ValueError, match="cannot mix"):
        reg.after_step()
