"""Optimisers and learning-rate schedules: closed forms, SGD against a hand-written update, the fused step
against the unfused one under a schedule, every optimiser with every measure, and run keys."""
import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import clreg
from clreg.core import native
from clreg.train.config import RunConfig
from clreg.train.optim import lr_factor, make_optimizer, make_schedule
from clreg.train.loop import Trainer, load_benchmark

RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results"


@pytest.mark.parametrize("kind, expected", [
    ("constant", lambda t: 1.0),
    ("step", lambda t: 0.5 ** ((t // 10) // 2)),
    ("exponential", lambda t: 0.5 ** (t / 10)),
    ("cosine", lambda t: 0.2 + 0.8 * (1 + math.cos(math.pi * t / 50)) / 2),
])
def test_schedule_factors_are_the_closed_forms(kind, expected):
    settings = {"lr_schedule": kind, "lr_gamma": 0.5, "lr_step_epochs": 2, "lr_min_factor": 0.2}
    factor = lr_factor(settings, steps=50, steps_per_epoch=10)
    assert [factor(t) for t in range(51)] == pytest.approx([expected(t) for t in range(51)], rel=1e-12)
    model = nn.Linear(2, 2)
    optimizer = make_optimizer(model, 0.1, {"optimizer": "sgd"})
    schedule = make_schedule(optimizer, settings, 50, 10)
    seen = [optimizer.param_groups[0]["lr"]]
    for _ in range(50):
        if schedule is not None:
            schedule.step()
        seen.append(optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([0.1 * expected(t) for t in range(51)], rel=1e-12)


@pytest.mark.parametrize("momentum, nesterov, weight_decay", [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 1e-2)])
def test_sgd_step_with_si_equals_a_hand_written_update(momentum, nesterov, weight_decay):
    """Regularizer.step(SGD) over a task with an active penalty against SGD written out in float64: the
    gradient of task loss + penalty by autograd, then b ← μb + (g + wd·θ), θ ← θ − lr·(g + μb or b); SI's
    path integral −Σ g_task ⊙ Δθ from the same steps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    data = [(torch.randn(32, 5, dtype=torch.float64), torch.randint(0, 3, (32,))) for _ in range(2)]
    reg = clreg.Regularizer(model, "si", c=0.5)
    opt = make_optimizer(model, 0.05, {"optimizer": "sgd", "momentum": momentum, "nesterov": nesterov,
                                       "weight_decay": weight_decay})
    for _ in range(5):  # task 1, so that task 2 has a penalty
        opt.zero_grad()
        F.cross_entropy(model(data[0][0]), data[0][1]).backward()
        reg.step(opt)
    reg.end_task()
    ref_model, ref_reg = copy.deepcopy((model, reg))  # together: ref_reg's penalty is on ref_model's parameters
    params = list(ref_model.parameters())
    buffers = [None] * len(params)
    path = [torch.zeros_like(p) for p in params]
    x, y = data[1]
    opt = make_optimizer(model, 0.05, {"optimizer": "sgd", "momentum": momentum, "nesterov": nesterov,
                                       "weight_decay": weight_decay})
    for _ in range(8):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        reg.step(opt)
        task_grads = torch.autograd.grad(F.cross_entropy(ref_model(x), y), params)
        grads = torch.autograd.grad(F.cross_entropy(ref_model(x), y) + ref_reg.penalty(), params)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, grads)):
                d = g + weight_decay * p
                if momentum:
                    buffers[i] = d.clone() if buffers[i] is None else momentum * buffers[i] + d
                    d = d + momentum * buffers[i] if nesterov else buffers[i]
                before = p.clone()
                p -= 0.05 * d
                path[i] -= task_grads[i] * (p - before)
    for p, q in zip(model.parameters(), params):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    for s, s_ref in zip(reg.measure.state, path):
        torch.testing.assert_close(s, s_ref, rtol=1e-8, atol=1e-14)


SMALL = dict(benchmark="permuted-digits", tasks=2, epochs=1, hidden=[32], batch_size=64, device="cpu")


@pytest.mark.skipif(native.load() is None, reason="no C compiler: the fused step is unavailable")
@pytest.mark.parametrize("method", ["si", "sos"])
def test_fused_and_unfused_runs_agree_under_adamw_and_a_schedule(method):
    config = RunConfig(**SMALL, method=method, c=1.0, optimizer="adamw", weight_decay=0.01, lr_schedule="cosine",
                       lr_min_factor=0.1)
    bench = load_benchmark(config)
    fused_run = Trainer(config, bench, progress=False)
    fused_accuracy = fused_run.run()
    plain_run = Trainer(config, bench, progress=False)
    plain_run.reg.step_backend = "torch"  # torch's own AdamW between the penalty and the statistic
    plain_accuracy = plain_run.run()
    for p, q in zip(fused_run.model.parameters(), plain_run.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    assert np.abs(fused_accuracy - plain_accuracy).max() <= 0.01


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
@pytest.mark.parametrize("method", ["si", "siu", "sib", "sos", "fisher", "sqrt-fisher", "mas", "l2", "finetune"])
def test_every_optimizer_with_every_measure(optimizer, method):
    """Both tasks are learned (with a c at which L2's uniform Ω leaves room for task 2) and Ω is finite."""
    extra = {"momentum": 0.9, "lr": 0.05} if optimizer == "sgd" else {"lr": 0.005}
    c = 0.01 if method == "l2" else 1.0
    config = RunConfig(**{**SMALL, "epochs": 3}, method=method, c=c, optimizer=optimizer, lr_schedule="step",
                       lr_step_epochs=2, lr_gamma=0.5, **extra)
    trainer = Trainer(config, load_benchmark(config), progress=False)
    accuracy = trainer.run()
    assert accuracy[0, 0] > 0.5 and accuracy[1, 1] > 0.5
    omega = trainer.reg.penalty_term.state_dict() if method != "finetune" else {}
    for value in omega.values():
        if torch.is_tensor(value):
            assert torch.isfinite(value).all()


def test_new_settings_enter_the_key_only_when_set():
    base = RunConfig(**SMALL)
    assert "optimizer" not in base.canonical() and "lr_schedule" not in base.canonical()
    sgd = RunConfig(**SMALL, optimizer="sgd")
    assert sgd.canonical()["optimizer"] == "sgd" and sgd.key() != base.key()
    assert RunConfig(**SMALL, optimizer="adam").key() == base.key()


def test_committed_results_keep_their_keys():
    """Every run committed under experiments/results is found again under the key this clreg computes."""
    rows = [row for path in sorted(RESULTS.glob("**/runs.json")) for row in json.loads(path.read_text())["runs"]]
    assert len(rows) >= 80
    assert [RunConfig.from_dict(row["config"]).key() for row in rows] == [row["key"] for row in rows]
