"""De Lange et al.'s per-task search (clreg.train.task_search): the learning rate chosen on validation by plain
runs, the penalty strength halved until the margin holds, every attempt started from the same state, and the
accepted attempt equal to the same schedule of learning rates and strengths trained directly."""
import numpy as np
import pytest
import torch

import clreg.train.loop
import clreg.train.task_search
from clreg.train.callbacks import Callback
from clreg.train.config import RunConfig
from clreg.core.penalty import QuadraticPenalty
from clreg.train.loop import Trainer, load_benchmark


def data_file(tmp_path):
    """6 classes (3 tasks of 2) that a small MLP can learn: Gaussian clusters in 6 pixels."""
    rng = np.random.default_rng(0)
    centres = rng.uniform(40, 215, (6, 6))

    def draw(n):
        y = np.arange(n) % 6
        return np.clip(centres[y] + rng.normal(0, 40, (n, 6)), 0, 255).astype(np.uint8), y
    (x_train, y_train), (x_test, y_test) = draw(600), draw(120)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def config(path, **settings):
    base = dict(benchmark=f"arrays:{path}", split_classes=2, tasks=2, epochs=2, batch_size=16, hidden=[8],
                method="si", c=1.0, reinit=True, lr_search=[0.01, 0.03, 0.1], lr_search_first=[0.1, 0.05],
                device="cpu")
    return RunConfig(**{**base, **settings})


class Witness(Callback):
    """Per attempt: the learning rate, the penalty strength and the parameters at its first step."""

    def __init__(self):
        self.attempts = []

    def on_before_step(self, trainer, batch):
        if batch.task_step == 0:
            self.attempts.append((batch.task, trainer.optimizer.param_groups[0]["lr"], trainer.reg.strength,
                                  [p.detach().clone() for p in trainer.model.parameters()]))


def scripted(monkeypatch, accuracies):
    values = iter(accuracies)
    def evaluate(model, bench, task, split="evaluation"):
        return next(values) if split == "validation" else 0.5

    for module in (clreg.train.loop, clreg.train.task_search):  # each evaluates through its own import
        monkeypatch.setattr(module, "evaluate", evaluate)


def test_search_picks_the_rate_then_halves_the_strength_until_the_margin_holds(tmp_path, monkeypatch):
    # task 1: plain runs at 0.1, 0.05 -> 0.05 best (0.8); no penalty in force: one attempt, accepted.
    # task 2: plain 0.5, 0.9, 0.7 -> lr 0.03, A* = 0.9, the bar (1 - 0.2) * 0.9 = 0.72;
    #         attempts at s = 1, 0.5, 0.25 score 0.60, 0.70, 0.75 -> the third is accepted.
    scripted(monkeypatch, [0.6, 0.8, 0.8, 0.5, 0.9, 0.7, 0.60, 0.70, 0.75])
    witness = Witness()
    trainer = Trainer(config(data_file(tmp_path)), load_benchmark(config(data_file(tmp_path))), progress=False,
                      callbacks=[witness])
    trainer.run()
    used = [(task, lr, strength) for task, lr, strength, _ in witness.attempts]
    assert used == [(0, 0.1, 0.0), (0, 0.05, 0.0), (0, 0.05, 1.0), (1, 0.01, 0.0), (1, 0.03, 0.0), (1, 0.1, 0.0),
                    (1, 0.03, 1.0), (1, 0.03, 0.5), (1, 0.03, 0.25)]
    first, second = trainer.search.history
    assert (first["lr"], first["reference"], len(first["attempts"]), first["strength"]) == (0.05, 0.8, 1, 1.0)
    assert (second["lr"], second["reference"], second["strength"]) == (0.03, 0.9, 0.25)
    assert [a["validation_accuracy"] for a in second["attempts"]] == [0.60, 0.70, 0.75]
    assert trainer.reg.strength == 0.25  # carried over to the next task
    steps = trainer.steps_per_task(0)
    assert [a["steps"] for a in first["plain"]] == [[1, steps], [steps + 1, 2 * steps]]
    for task in (0, 1):  # every attempt of a task starts from the same weights (re-init draws included)
        starts = [params for t, _, _, params in witness.attempts if t == task]
        for params in starts[1:]:
            for a, b in zip(starts[0], params):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_failing_every_attempt_keeps_the_last_and_decays_once_more(tmp_path, monkeypatch):
    scripted(monkeypatch, [0.8, 0.8, 0.8, 0.9, 0.1, 0.1, 0.1])  # task 1: 2 plain, 1 attempt; task 2: 1 plain, 3 fail
    path = data_file(tmp_path)
    cfg = config(path, lr_search=[0.03], stability_attempts=3, stability_decay=0.1)
    trainer = Trainer(cfg, load_benchmark(cfg), progress=False)
    trainer.run()
    last = trainer.search.history[1]
    assert [a["strength"] for a in last["attempts"]] == pytest.approx([1.0, 0.1, 0.01])
    assert last["strength"] == pytest.approx(0.01) and trainer.reg.strength == pytest.approx(0.001)


def test_accepted_attempts_equal_the_same_schedule_trained_directly(tmp_path):
    """The search restores model, penalty, measure and random generators exactly: its end state equals
    training task 1 at its lr*, then task 2 at its lr* and accepted strength, without any other attempt."""
    path = data_file(tmp_path)
    for method in ("si", "sos", "fisher"):
        cfg = config(path, method=method, c=10.0, stability_margin=0.0)  # margin 0: task 2 needs decays
        searched = Trainer(cfg, load_benchmark(cfg), progress=False)
        matrix = searched.run()
        if method != "fisher":  # (Fisher vanishes on a task learnt to 100%: no decay there)
            assert len(searched.search.history[1]["attempts"]) > 1 and searched.search.history[1]["strength"] < 1
        plain = config(path, method=method, c=10.0, lr_search=None, lr_search_first=None)
        direct = Trainer(plain, load_benchmark(plain), progress=False)
        for task, record in enumerate(searched.search.history):
            direct.reg.strength = record["strength"]
            direct.fit_task(task, lr=record["lr"])
            direct.finish_task(task)
        for a, b in zip(searched.model.parameters(), direct.model.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        for a, b in zip(searched.reg.omega.values(), direct.reg.omega.values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        final = [clreg.train.loop.evaluate(direct.model, direct.bench, j) for j in range(2)]
        assert matrix[-1].tolist() == final


def test_a_diverging_rate_scores_nothing(tmp_path):
    path = data_file(tmp_path)
    cfg = config(path, optimizer="sgd", lr_search_first=[1e30, 0.05], lr_search=[0.05], tasks=1)
    trainer = Trainer(cfg, load_benchmark(cfg), progress=False)
    trainer.run()
    plain = trainer.search.history[0]["plain"]
    assert plain[0]["validation_accuracy"] is None and "diverged" in plain[0]["diverged"]
    assert trainer.search.history[0]["lr"] == 0.05


def test_a_resumed_search_continues_identically(tmp_path):
    path = data_file(tmp_path)
    cfg = config(path, tasks=3, c=10.0, stability_margin=0.0)  # strengths decay at tasks 2 and 3
    whole = clreg.train.loop.run(cfg, progress=False)

    class Interrupt(Callback):
        def on_task_start(self, trainer, task, steps):
            if task == 2:  # after task 2's decays: the lowered strength must come back from the checkpoint
                raise KeyboardInterrupt

    checkpoint = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        clreg.train.loop.run(cfg, progress=False, checkpoint_path=checkpoint, callbacks=[Interrupt()])
    resumed = clreg.train.loop.run(cfg, progress=False, checkpoint_path=checkpoint, resume=True)
    assert resumed["accuracy_matrix"] == whole["accuracy_matrix"]
    assert resumed["search"] == whole["search"] and whole["search"][1]["strength"] < 1


def test_strength_scales_value_and_gradient_in_every_mode():
    torch.manual_seed(0)
    params = [torch.randn(5), torch.randn(3, 2)]
    for mode in ("online", "separate", "debiased"):
        penalty = QuadraticPenalty(params, c=2.0, prior=0.1, mode=mode)
        for _ in range(2):
            penalty.consolidate([torch.rand_like(p) for p in params], [p + torch.randn_like(p) for p in params])
        value, grad = penalty.value(params), [g.clone() for g in penalty.gradient(params)]
        penalty.set_strength(0.3)
        assert float(penalty.value(params)) == pytest.approx(0.3 * float(value), rel=1e-6)
        for g, g1 in zip(penalty.gradient(params), grad):
            torch.testing.assert_close(g, 0.3 * g1)
        penalty.set_strength(0.0)
        assert not penalty.active


def test_search_settings_are_checked(tmp_path):
    path = data_file(tmp_path)
    with pytest.raises(ValueError, match="stability_margin applies to lr_search only"):
        config(path, lr_search=None, lr_search_first=None, stability_margin=0.5)
    with pytest.raises(ValueError, match="leave lr unset"):
        config(path, lr=0.01)
    with pytest.raises(ValueError, match="lr_search must be positive numbers"):
        config(path, lr_search="0.1,-1")
    digits = RunConfig(benchmark="permuted-digits", tasks=1, lr_search=[0.01], device="cpu")
    with pytest.raises(ValueError, match="lr_search is scored on validation splits"):
        Trainer(digits, load_benchmark(digits), progress=False)
