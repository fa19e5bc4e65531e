"""Dropout: training steps use it; every importance gradient is taken with it off (SPEC §2)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clreg import Regularizer
from clreg.train.config import RunConfig
from clreg.models.build import build_model, task_forward
from clreg.train.optim import make_optimizer


def cnn():
    return build_model("cifar-cnn", (3, 8, 8), [3, 4, 6], [4, 4], torch.Generator().manual_seed(1))


def mlp_with_dropout():  # contiguous parameters: the fused Adam kernel takes this step
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 4))


def eval_gradient(model, params, forward, x, y):
    model.eval()
    grads = torch.autograd.grad(F.cross_entropy(forward(x), y), params)
    model.train()
    return grads


@pytest.mark.parametrize("make", [cnn, mlp_with_dropout], ids=["cifar-cnn", "mlp-fused"])
def test_si_path_uses_the_eval_mode_gradient(make):
    model = make()
    multi = make is cnn
    forward = task_forward(model, 1) if multi else model
    reg = Regularizer(model, "si", c=0.0, heads=("heads",) if multi else ())
    x = torch.rand(32, 3, 8, 8) if multi else torch.rand(32, 12)
    y = torch.randint(0, 4, (32,))
    optimizer = make_optimizer(model, 1e-2)
    before = [p.detach().clone() for p in reg.params]
    g_eval = eval_gradient(model, reg.params, forward, x, y)
    torch.manual_seed(5)
    model.train()
    F.cross_entropy(forward(x), y).backward()  # dropout on
    g_train = [p.grad.clone() for p in reg.params]
    reg.before_step(task_loss=lambda: F.cross_entropy(forward(x), y))
    reg.step(optimizer)
    delta = [p.detach() - b for p, b in zip(reg.params, before)]
    for s, d, ge, gt in zip(reg.measure.state, delta, g_eval, g_train):
        moved = d.abs() > 1e-6
        torch.testing.assert_close(-s[moved] / d[moved], ge[moved], rtol=2e-3, atol=1e-6)  # s = −g_t ⊙ Δ_t
    assert max(float((ge - gt).abs().max()) for ge, gt in zip(g_eval, g_train)) > 1e-3  # dropout did change g


def count_forwards(model):
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("method,dropout,passes", [("si", 0.5, 2), ("si", 0.0, 1), ("siu", 0.5, 2), ("sos", 0.5, 2),
                                                   ("mas", 0.5, 1)])
def test_the_extra_pass_is_paid_only_with_dropout_and_only_where_g_t_is_read(method, dropout, passes):
    from clreg.benchmarks import permuted_digits
    from clreg.train.loop import Trainer

    bench = permuted_digits(num_tasks=1)
    trainer = Trainer(RunConfig(benchmark="permuted-digits", method=method, tasks=1, epochs=1, batch_size=32,
                                hidden=[8]), bench, progress=False)
    model = trainer.model
    trainer.model[1] = nn.Sequential(nn.ReLU(), nn.Dropout(dropout))  # dropout after the hidden layer
    trainer.dropout = dropout > 0
    calls = count_forwards(model)
    optimizer = make_optimizer(model, 1e-3)
    x, y = bench.batch(0, torch.arange(32))
    independent = bench.batch(0, torch.arange(32, 64)) if trainer.reg.measure.needs_independent_gradient else None
    trainer.step(optimizer, model, x, y, independent)
    assert len(calls) == passes  # siu: its one extra pass is g'_t, it never reads g_t


def test_split_sos_with_dropout_is_refused_with_the_alternative():
    model = cnn()
    reg = Regularizer(model, "sos", c=1.0, heads=("heads",), alpha=1.0, split=True)
    forward = task_forward(model, 0)
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 4, (8,))
    with pytest.raises(ValueError, match="use split=False"):
        reg.backward_split(F.cross_entropy(forward(x[:4]), y[:4]), F.cross_entropy(forward(x[4:]), y[4:]))
    with pytest.raises(ValueError, match="use --no-split"):
        RunConfig(benchmark="split-cifar10", method="sos", sos_split=True, sos_alpha=1.0)


@pytest.mark.parametrize("method,options", [("sib", {}), ("sos", {"alpha": 1.0})])
def test_fused_step_with_dropout_equals_the_unfused_path(method, options, monkeypatch):
    import copy

    from clreg.core import fused

    model = mlp_with_dropout()
    reg = Regularizer(model, method, c=0.3, **options)
    x, y = torch.rand(32, 12), torch.randint(0, 4, (32,))
    xi, yi = torch.rand(32, 12), torch.randint(0, 4, (32,))
    reg.end_task()  # a penalty from a first task, so that ∇R is in play
    twin = copy.deepcopy((model, reg))
    calls = []
    monkeypatch.setattr(fused, "adam_step", lambda *a, real=fused.adam_step, **k: calls.append(1) or real(*a, **k))
    results = []
    for (m, r), backend in (((model, reg), None), (twin, "torch")):
        optimizer = make_optimizer(m, 1e-2)
        torch.manual_seed(3)
        F.cross_entropy(m(x), y).backward()
        r.before_step(task_loss=lambda: F.cross_entropy(m(x), y), independent_loss=lambda: F.cross_entropy(m(xi), yi))
        r.step(optimizer, backend=backend)
        state = r.measure.state
        results.append(([p.detach().clone() for p in m.parameters()], [s.clone() for s in state]))
    assert calls == [1]  # the first took the fused kernel, the second the unfused path
    (params_a, state_a), (params_b, state_b) = results
    for a, b in zip(params_a + state_a, params_b + state_b):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    assert max(float(s.abs().max()) for s in state_a) > 0
