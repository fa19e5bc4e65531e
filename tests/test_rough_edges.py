"""What a new user ran into (issue 14, section 4), one test each: output directories, one-line errors with
the right exit code, MultiHead without forward=, no warnings from clreg's own machinery."""
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import clreg
from clreg.train.config import RunConfig
from clreg.models.build import MultiHead, task_forward
from clreg.core.records import check_writable
from clreg.sweeps.store import Store
from clreg.train.loop import Trainer, load_benchmark

CLREG = [sys.executable, "-c", "from clreg.cli.commands import main; main()"]


def clreg_run(*args):
    return subprocess.run([*CLREG, "run", "--quiet", *args], capture_output=True, text=True, timeout=120)


def test_output_directories_are_created(tmp_path):
    Store(tmp_path / "runs" / "deep" / "s.sqlite")  # the README's `--store runs/x.sqlite` on a fresh clone
    assert (tmp_path / "runs" / "deep" / "s.sqlite").is_file()
    check_writable(tmp_path / "out" / "run.json")
    assert (tmp_path / "out").is_dir()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="cannot create the output directory .*file/sub"):
        check_writable(blocker / "sub" / "run.json")


def small_npz(path, n=40, classes=4, **override):
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 255, (n, 6), dtype=np.uint8), y_train=np.arange(n) % classes,
                  x_test=rng.integers(0, 255, (20, 6), dtype=np.uint8), y_test=np.arange(20) % classes)
    arrays.update(override)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("case, message", [
    ("npy", "a .npy file holds one array; arrays:PATH needs a .npz file with x_train"),
    ("small-task", "task 1 of arrays:"),
    ("missing", "no such file (arrays:PATH needs a .npz file)"),
    ("float-labels", "y_train must be integers, got float64"),
    ("unknown-array", "unknown arrays colour"),
])
def test_bad_user_data_is_one_line_and_exit_2(tmp_path, case, message):
    path = tmp_path / "data.npz"
    extra = []
    if case == "npy":
        path = tmp_path / "data.npy"
        np.save(path, np.zeros((3, 3)))
    elif case == "small-task":
        small_npz(path)
        extra = ["--split-classes", "2"]  # 20 examples per task, 18 after the 10% validation holdout; batch 256
    elif case == "float-labels":
        small_npz(path, y_train=np.arange(40) * 0.5)
    elif case == "unknown-array":
        small_npz(path, colour=np.zeros(3))
    if case != "missing" and case != "npy":
        extra = extra or ["--permute", "2"]
    p = clreg_run("--benchmark", f"arrays:{path}", *extra)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and message in lines[-1] and "Traceback" not in p.stderr, p.stderr
    if case == "small-task":
        assert "fewer than one batch of 256: lower --batch-size to at most 18" in lines[-1]


@pytest.mark.slow
def test_too_many_tasks_is_exit_2(mnist_dir):
    p = clreg_run("--benchmark", "split-mnist", "--tasks", "20", "--data-dir", str(mnist_dir))
    assert p.returncode == 2 and "--tasks must be 1..5, got 20" in p.stderr and "Traceback" not in p.stderr


def test_multihead_end_task_without_forward_says_what_to_pass():
    model = MultiHead(nn.Linear(4, 8), [nn.Linear(8, 2), nn.Linear(8, 2)])
    reg = clreg.Regularizer(model, "fisher", c=1.0, heads=("heads",))
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match=r"MultiHead.forward takes \(x, task\).*pass forward=.*task_forward"):
        reg.end_task(x)
    omega = reg.end_task(x, forward=task_forward(model, 0))
    assert set(omega) == {"body.weight", "body.bias"}


@pytest.mark.slow
@pytest.mark.parametrize("network, hidden, data", [("mlp", [16], "permuted"), ("cifar-cnn", [4, 4, 8], "split")])
def test_training_and_every_measure_emit_no_warnings(tmp_path, network, hidden, data):
    """Warnings are errors here: training, the trajectory statistics and every post-task measure (the
    per-sample engine's hooks included) run without one, on an MLP and on the CNN with dropout."""
    path = small_npz(tmp_path / "d.npz", n=256, x_train=np.random.default_rng(1).integers(0, 255, (256, 3, 8, 8),
                                                                                          dtype=np.uint8),
                     x_test=np.random.default_rng(2).integers(0, 255, (20, 3, 8, 8), dtype=np.uint8))
    recipe = {"permute": 2} if data == "permuted" else {"split_classes": 2}
    for method in ("si", "siu", "sos", "fisher", "sqrt-fisher", "af", "mas", "masx-logits"):
        config = RunConfig(benchmark=f"arrays:{path}", network=network, hidden=hidden, method=method, epochs=1,
                           batch_size=32, device="cpu", **recipe)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            Trainer(config, load_benchmark(config), progress=False).run()


def test_sweep_whose_runs_all_fail_says_so_and_exits_1(tmp_path, monkeypatch, capsys):
    import yaml

    from clreg.cli import commands

    data = tmp_path / "gone.npz"
    small_npz(data, n=64)
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"benchmark": f"arrays:{data}", "settings": {"permute": 2, "epochs": 1,
                                                                                  "batch_size": 16, "hidden": [8]},
                                    "methods": {"si": {"c": [1, 2]}, "finetune": {}}}))
    dry = subprocess.run([*CLREG, "sweep", str(spec), "--dry-run"], capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0 and "4 run(s) to start now" in dry.stdout  # data found (finetune: its search
    # run on validation and its final run on test, at once)
    data.unlink()
    store = tmp_path / "runs" / "s.sqlite"
    for extra in (["--dry-run"], ["--store", str(store)]):  # missing data: exit 2 before any store or run
        p = subprocess.run([*CLREG, "sweep", str(spec), *extra], capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and "gone.npz: no such file" in p.stderr and not store.exists()
    # data that vanishes after the check: every run fails, the sweep says so and exits 1
    monkeypatch.setattr(commands, "check_sweep_data", lambda spec, runtime: None)
    monkeypatch.setattr(sys, "argv", ["clreg", "sweep", str(spec), "--store", str(store), "--threads", "1"])
    with pytest.raises(SystemExit) as stop:
        commands.main()
    out, err = capsys.readouterr()
    assert stop.value.code == 1 and "3 run(s) failed, so finetune, si got no result; first error: DataFileError:" in err
    assert "| si | (2 run(s) failed: DataFileError:" in out and "diverged" not in out
    assert "c = " not in out  # no c is chosen from failed runs
    rows = Store(store).runs()
    assert {r["status"] for r in rows} == {"failed"}
    assert all(r["message"].startswith("DataFileError: ") and "Traceback" in r["error"] for r in rows)


@pytest.mark.slow
def test_benchmark_defaults_make_a_bare_run_sensible():
    """A bare `clreg run --benchmark permuted-digits` takes the benchmark's epochs, widths, batch size and
    SI's known c: SI now beats fine-tuning by far (with P-MNIST's c = 0.2 it scored below it)."""
    results = {}
    for method in ("si", "finetune"):
        p = clreg_run("--benchmark", "permuted-digits", "--method", method, "--threads", "1")
        assert p.returncode == 0, p.stderr
        results[method] = float(p.stdout.split("average accuracy ")[1].split("%")[0])
        if method == "si":
            assert "clreg run: si c=30 re-init off (known good for permuted-digits)" in p.stderr
            assert "permuted-digits: 5 tasks x 5 epochs = 1,100 steps of b=32, lr 0.001" in p.stderr
    assert results["si"] > results["finetune"] + 10


def test_pmnist_defaults_are_the_papers():
    from clreg.benchmarks import defaults

    # SPEC §5: the authors' chosen (c, re-init) on P-MNIST, and the protocol
    expected = {"si": (0.2, True), "siu": (2, True), "sib": (0.5, True), "sos": (1, True), "mas": (500, False),
                "af": (200, False), "sqrt-fisher": (2, False), "fisher": (1000, False), "ewc": (1000, False)}
    for method, (c, reinit) in expected.items():
        config = RunConfig(method=method)
        assert (config.c, config.reinit, config.epochs, config.batch_size, config.learning_rate, config.widths) == \
            (c, reinit, 20, 256, 1e-3, [2000, 2000])
    assert RunConfig(benchmark="split-cifar10-100", method="sos", batch_size=2048).learning_rate == 1e-3  # not scaled
    assert defaults("split-mnist").method("si") == (1.0, False, False)  # nothing known: generic, and said so


def test_long_run_warning_says_how_long():
    p = clreg_run("--benchmark", "permuted-digits", "--tasks", "2", "--warn-after", "0")
    line = next(line for line in p.stderr.splitlines() if line.startswith("this run will take about"))
    assert "440 steps at" in line and "ms per step" in line
    quiet = clreg_run("--benchmark", "permuted-digits", "--tasks", "2")
    assert "this run will take" not in quiet.stderr
