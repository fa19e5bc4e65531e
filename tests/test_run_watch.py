"""What a training run watches and says: the divergence guard (loss, penalty, parameters), runs that did not learn,
a trajectory measure that saw no step, where the run header's c comes from, and the long-run estimate."""
import math
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import clreg
from clreg.cli import commands
from clreg.importance.base import ImportanceMeasure
from clreg.regularizer import NoStepsWarning
from clreg.train import metrics, progress
from clreg.train.config import RunConfig
from clreg.train.guard import Diverged, DivergenceGuard, parameters_check
from clreg.train.loop import Trainer, load_benchmark, run
from clreg.vectorized.trainer import VectorizedTrainer

NAN, INF = float("nan"), float("inf")
# a small, fast run: permuted digits, 2 tasks of one epoch
TINY = dict(benchmark="permuted-digits", method="si", tasks=2, hidden=[16], epochs=1, batch_size=32, device="cpu")


@pytest.fixture(scope="module")
def bench():
    return load_benchmark(RunConfig(**TINY))


def feed(guard: DivergenceGuard, steps: list[tuple[float, float | None, float]], task: int) -> None:
    """Steps 1.. of `task`: (loss, penalty or None, parameters' check) each, then the task's end."""
    for step, (loss, penalty, params) in enumerate(steps, start=1):
        guard.before_step(torch.tensor(loss), None if penalty is None else torch.tensor(penalty), step, task)
        guard.after_step(torch.tensor(params))
    guard.check()


@pytest.mark.parametrize("every", [1, 4, 50])
@pytest.mark.parametrize("bad, message", [
    ((1.0, INF, NAN), "the penalty became inf at step 7 (task 2)"),  # the penalty before the step that broke θ
    ((NAN, INF, NAN), "the training loss became nan at step 7 (task 2)"),  # the loss comes first
    ((1.0, None, NAN), "the parameters became non-finite at step 7 (task 2), after the optimiser step"),
    ((1.0, 5.0, NAN), "the parameters became non-finite at step 7 (task 2), after the optimiser step"),
])
def test_the_guard_names_what_became_non_finite_first(every, bad, message):
    steps = [(1.0, 2.0, 0.0)] * 6 + [bad] + [(NAN, NAN, NAN)] * 3
    guard = DivergenceGuard(torch.device("cpu"), every)
    with pytest.raises(Diverged, match=f"^diverged: {message}$".replace("(", r"\(").replace(")", r"\)")) as error:
        feed(guard, steps, task=1)
    assert (error.value.step, error.value.task) == (7, 1)
    feed(guard, [(1.0, 2.0, 0.0)] * 9, task=1)  # after a diverged attempt (a task search) it starts afresh


def test_the_parameters_check_is_exact_about_finiteness():
    finite = [torch.full((3, 4), 1e30), torch.zeros(5), torch.tensor([-3e38, 3e38])]
    assert parameters_check(finite).item() == 0  # large but finite: no divergence
    for bad in (INF, -INF, NAN):
        broken = [t.clone() for t in finite]
        broken[1][2] = bad
        assert math.isnan(parameters_check(broken).item())


@pytest.mark.parametrize("every", [None, 50])  # checked at once (the CPU), or every 50 steps (as on a GPU)
def test_an_infinite_c_is_the_penalty_at_the_second_tasks_first_step(bench, every):
    """c = 1e300 is inf in float32: R(θ) is NaN from task 2's first step on (∞·0 where Ω = 0); that step's
    update breaks the parameters, so the loss turns NaN a step later: the guard names the penalty."""
    trainer = Trainer(RunConfig(**TINY, c=1e300), bench, progress=False)
    trainer.guard = DivergenceGuard(torch.device("cpu"), every)
    with pytest.raises(Diverged) as error:
        trainer.run()
    first = bench.epoch_size(0) // 32 + 1  # task 2's first step: 44 steps of 32 in task 1's 1,438 examples
    assert (error.value.what, error.value.step, error.value.task) == ("penalty", first, 1)
    assert str(error.value) == f"diverged: the penalty became nan at step {first} (task 2)"


def test_an_update_that_overflows_is_the_parameters_at_its_step(bench):
    """Adam at lr 1e39 moves every weight by about ±1e39, beyond float32: θ is infinite after step 1, while
    the loss of step 1 was finite (it would be NaN at step 2)."""
    with pytest.raises(Diverged, match=r"^diverged: the parameters became non-finite at step 1 \(task 1\), after "
                                       r"the optimiser step$") as error:
        run(RunConfig(**TINY, lr=1e39), progress=False, bench=bench)
    assert error.value.what == "parameters" and error.value.loss is None


@pytest.mark.parametrize("stacked_step, every", [(False, None), (True, None), (True, 50)])
def test_a_vectorised_job_names_the_same_failures_as_runs_alone(stacked_step, every):
    configs = [RunConfig(**TINY, c=1.0, seed=0), RunConfig(**TINY, c=1e300, seed=1),
               RunConfig(**TINY, c=1.0, lr=1e39, seed=2)]
    job = VectorizedTrainer(configs, stacked_step=stacked_step)
    for member in job.members:
        member.guard = DivergenceGuard(torch.device("cpu"), every)
    outcomes = job.run()
    assert isinstance(outcomes[0], dict)
    for config, outcome in zip(configs[1:], outcomes[1:]):
        with pytest.raises(Diverged) as alone:
            Trainer(config, load_benchmark(config), progress=False).run()
        assert isinstance(outcome, Diverged) and str(outcome) == str(alone.value)


def test_chance_is_one_over_each_heads_classes():
    assert metrics.chance(10, 4) == pytest.approx(0.1)
    assert metrics.chance([2, 2, 10], 3) == pytest.approx((0.5 + 0.5 + 0.1) / 3)
    assert metrics.did_not_learn(0.149, 0.1) and not metrics.did_not_learn(0.151, 0.1)


def test_a_run_at_chance_did_not_learn_and_a_run_that_learned_did(bench):
    """Adam at lr 1e6 keeps every number finite and ends at chance: not diverged, but flagged."""
    stuck = run(RunConfig(**TINY, lr=1e6), progress=False, bench=bench)
    learned = run(RunConfig(**{**TINY, "epochs": 3, "hidden": [64]}), progress=False, bench=bench)
    for result in (stuck, learned):
        assert result["chance"] == pytest.approx(0.1)  # 10 digits, one shared head
        average = np.mean(np.asarray(result["accuracy_matrix"])[-1])
        assert result["did_not_learn"] is bool(average < 0.1 + 0.05)
    assert stuck["did_not_learn"] and not learned["did_not_learn"]


def clreg_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """`clreg ARGS` in this process: exit code, stdout, stderr (torch's thread count, which it sets, restored)."""
    monkeypatch.setattr(sys, "argv", ["clreg", *args])
    threads = torch.get_num_threads()
    try:
        commands.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    return code, out, err


def test_clreg_run_says_when_a_run_did_not_learn(monkeypatch, capsys):
    code, out, err = clreg_main(monkeypatch, capsys, "run", "--benchmark", "permuted-digits", "--tasks", "2", "--hidden",
                                "16", "--epochs", "1", "--lr", "1e6", "--quiet", "--device", "cpu")
    assert code == 0 and "average accuracy" in out
    lines = [line for line in err.splitlines() if "did not learn" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: this run did not learn: average accuracy ")
    assert "below chance (10.00%) + 5 points" in lines[0]
    assert "not measured at these settings (hidden 16, epochs 1, lr 1e+06)" in err  # and so not "known good"
    assert "known good" not in err


def test_known_good_only_at_the_settings_it_was_measured_at():
    assert commands.value_source(RunConfig()) == "known good for permuted-mnist"
    assert commands.value_source(RunConfig(hidden=[400, 400], epochs=8)) == (
        "from permuted-mnist's table at mlp 2000,2000 x 20 epochs, b=256, lr 0.001, adam; not measured at these "
        "settings (hidden 400,400, epochs 8): choose c with `clreg sweep`")
    assert "(b 2048, lr 0.008)" in commands.value_source(RunConfig(batch_size=2048))  # the lr follows b
    assert commands.value_source(RunConfig(benchmark="permuted-digits", tasks=5)) == "known good for permuted-digits"


def test_re_init_with_too_few_epochs_is_warned_about():
    warning = commands.reinit_warning(RunConfig(epochs=1))  # SI on P-MNIST: re-init on, measured at 20 epochs
    assert warning.startswith("re-init is on with 1 epoch(s) per task") and "use --epochs 10 or more, or " \
        "--no-reinit" in warning
    assert commands.reinit_warning(RunConfig(epochs=9)) is not None
    assert commands.reinit_warning(RunConfig(epochs=10)) is None
    assert commands.reinit_warning(RunConfig(epochs=1, reinit=False)) is None
    assert commands.reinit_warning(RunConfig(method="mas", epochs=1)) is None  # re-init off by default


def caught(action) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        action()
    return seen


def train(reg: clreg.Regularizer, model: nn.Module, use_step: bool, after_step: bool) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 2, (8,))).backward()
        if use_step:
            reg.step(optimizer)
        else:
            optimizer.step()
            if after_step:
                reg.after_step()


@pytest.mark.parametrize("method", ["si", "sos"])
def test_a_trajectory_measure_that_saw_no_step_warns_once(method):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    reg = clreg.Regularizer(model, method, c=1.0)
    train(reg, model, use_step=False, after_step=False)  # reg.after_step() forgotten
    seen = caught(reg.end_task)
    assert [w.category for w in seen] == [NoStepsWarning]
    assert "saw no optimiser step in this task" in str(seen[0].message)
    assert "call reg.after_step() after each optimizer.step(), or use reg.step(optimizer)" in str(seen[0].message)
    assert seen[0].filename == __file__  # it points at the end_task call
    assert all(float(o.abs().sum()) == 0 for o in reg.omega.values())
    train(reg, model, use_step=False, after_step=False)
    assert caught(reg.end_task) == []  # once per Regularizer (per run)
    for use_step in (True, False):
        fresh = clreg.Regularizer(model, method, c=1.0)
        train(fresh, model, use_step=use_step, after_step=True)
        assert caught(fresh.end_task) == []


class Noisy(ImportanceMeasure):
    """A post-task measure that warns at every task end, as the per-sample engine's vmap fallback does."""

    name = "noisy"

    def task_importance(self, params, sample):  # noqa: D102
        warnings.warn("the model's forward cannot run under torch.func.vmap", RuntimeWarning)
        return [torch.zeros_like(p) for p in params]


def test_a_warning_of_every_task_end_is_given_once_per_run():
    model = nn.Linear(4, 2)
    reg = clreg.Regularizer(model, Noisy(), c=1.0)
    seen = caught(lambda: [reg.end_task() for _ in range(3)])
    assert [str(w.message) for w in seen] == ["the model's forward cannot run under torch.func.vmap"]
    again = clreg.Regularizer(model, Noisy(), c=1.0)
    assert len(caught(again.end_task)) == 1  # a new run says it again


class FakeTrainer:
    def __init__(self, tasks: int, steps: int):
        self.bench = type("Bench", (), {"num_tasks": tasks})()
        self.per_task, self.steps_done = steps, 0
        self.timing = {"train_seconds": 0.0, "importance_seconds": 0.0, "evaluation_seconds": 0.0}

    def steps_per_task(self, task: int) -> int:
        return self.per_task


def drive(monkeypatch, warning, trainer, costs: list[float]) -> None:
    """The first task's steps, step i taking costs[i] seconds; then its importance (3 s) and evaluation (2 s)."""
    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    warning.on_run_start(trainer)
    warning.on_task_start(trainer, 0, trainer.per_task)
    for i, cost in enumerate(costs):
        clock[0] += cost
        trainer.steps_done += 1
        trainer.timing["train_seconds"] += cost
        warning.on_step(trainer, type("Step", (), {"task": 0, "task_step": i + 1})())
    trainer.timing["importance_seconds"] += 3.0
    trainer.timing["evaluation_seconds"] += 2.0
    warning.on_evaluation(trainer, 0, [])


def test_the_long_run_estimate_skips_the_warm_up_and_waits_for_its_window(monkeypatch):
    said = []
    warning = progress.LongRunWarning(said.append, threshold=100, warmup=5, probe=10, seconds=8)
    drive(monkeypatch, warning, FakeTrainer(tasks=2, steps=100), [30.0] * 5 + [1.0] * 95)  # a slow start
    assert said == ["this run will take about 3 min: 200 steps at 1000.0 ms per step (training only); --epochs, "
                    "--tasks or --hidden shorten it"]


def test_a_short_first_task_adds_its_importance_and_evaluation_time(monkeypatch):
    said = []
    warning = progress.LongRunWarning(said.append, threshold=10, warmup=5, probe=200, seconds=30)
    drive(monkeypatch, warning, FakeTrainer(tasks=3, steps=20), [30.0] * 5 + [0.5] * 15)
    # 0.5 s × 60 steps + (3 + 2) s × 3 tasks = 45 s
    assert said == ["this run will take about 45 s: 60 steps at 500.0 ms per step (and 5 s of importance and "
                    "evaluation per task); --epochs, --tasks or --hidden shorten it"]
    quiet = []
    warning = progress.LongRunWarning(quiet.append, threshold=46, warmup=5, probe=200, seconds=30)
    drive(monkeypatch, warning, FakeTrainer(tasks=3, steps=20), [30.0] * 5 + [0.5] * 15)
    assert quiet == []


def test_messages_and_warnings_go_above_the_progress_bars(monkeypatch, capsys):
    from tqdm import tqdm

    cleared = []
    original = tqdm.external_write_mode
    monkeypatch.setattr(tqdm, "external_write_mode", lambda **kw: (cleared.append(kw), original(**kw))[1])
    progress.write("one line")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *args, **kwargs: print(f"clreg: warning: {message}", file=sys.stderr)
        with progress.warnings_above_bars():  # the printer in force (the CLI's), called with the bars cleared
            warnings.warn("a warning", UserWarning)
    err = capsys.readouterr().err
    assert err == "one line\nclreg: warning: a warning\n" and len(cleared) == 2
