"""The CLI contract: invalid input fails before training, one line, exit code 2."""
import json
import re
import os
import subprocess
import sys

import pytest

CLREG = [sys.executable, "-c", "from clreg.cli.commands import main; main()"]


HANG = 900  # seconds: a guard against a hung command, not a speed check (the demo takes 2 min on a loaded VM)


def clreg(*args, **kwargs):
    return subprocess.run([*CLREG, *args], capture_output=True, text=True, timeout=HANG, **kwargs)


@pytest.mark.parametrize("args,message", [
    (["--method", "nope"], "unknown method 'nope'; choose one of: si, siu"),
    (["--benchmark", "cifar99"], "unknown benchmark 'cifar99'; choose one of: permuted-mnist"),
    (["--c", "-1"], "Invalid value for '--c': must be >= 0, got -1.0"),
    (["--xi", "0"], "Invalid value for '--xi': must be > 0, got 0.0"),
    (["--xi", "-0.5"], "Invalid value for '--xi': must be > 0, got -0.5"),
    (["--tasks", "0"], "Invalid value for '--tasks': must be >= 1, got 0"),
    (["--tasks", "1.5"], "Invalid value for '--tasks': must be an integer, got '1.5'"),
    (["--hidden", "20,abc"],
     "Invalid value for '--hidden': must be positive integers separated by commas (e.g. 2000,2000), got '20,abc'"),
    (["--hidden", "0"], "Invalid value for '--hidden': must be positive integers"),
    (["--out", "/dev/null/sub/run.json"], "cannot create the output directory '/dev/null/sub'"),
    (["--alpha", "big"], "Invalid value for '--alpha': must be a number or 'auto', got 'big'"),
    (["--eval", "train"], "Invalid value for '--eval': must be one of test, validation, got 'train'"),
    (["--penalty", "sum"], "Invalid value for '--penalty': must be one of online, separate, debiased, got 'sum'"),
    (["--penalty", "separate", "--decay", "0.9"], "decay (gamma) applies to the online penalty only, not 'separate'"),
    (["--revisit"], "revisit drops a task's penalty, which needs penalty 'debiased'"),
    (["--prior", "-1"], "Invalid value for '--prior': must be >= 0, got -1.0"),
    (["--proxy-every", "-5"], "Invalid value for '--proxy-every': must be >= 0, got -5"),
    (["--network", "resnet"],
     "Invalid value for '--network': must be one of mlp, cifar-cnn, vgg-small, vgg-base, vgg-wide, vgg-deep, got 'resnet'"),
    (["--optimizer", "rmsprop"], "Invalid value for '--optimizer': must be one of adam, adamw, sgd, got 'rmsprop'"),
    (["--momentum", "0.9"], "--momentum applies to --optimizer sgd only, not 'adam'"),
    (["--optimizer", "sgd", "--nesterov"], "--nesterov needs --momentum > 0"),
    (["--lr-schedule", "cosine", "--lr-gamma", "0.5"],
     "--lr-gamma applies to --lr-schedule step, exponential, plateau only, not 'cosine'"),
    (["--lr-schedule", "step", "--lr-min-factor", "0.5"], "--lr-min-factor applies to --lr-schedule cosine only"),
    (["--lr-gamma", "0"], "Invalid value for '--lr-gamma': must be in (0, 1], got 0.0"),
    (["--benchmark", "split-cifar10", "--hidden", "32,64"], "the cifar-cnn network takes 3 widths"),
    (["--split-classes", "2"], "--split-classes applies to split-tiny-imagenet and arrays:PATH only"),
    (["--permute", "2"], "--permute applies to arrays:PATH only"),
    (["--benchmark", "arrays:"], "arrays:PATH needs the path of a .npz file after the colon"),
    (["--benchmark", "split-cifar10", "--method", "sos", "--alpha", "1", "--split"], "use --no-split"),
])
def test_invalid_input_exits_2_with_one_line(args, message):
    result = clreg("run", *args, "--data-dir", "/nonexistent-data")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_unwritable_outputs(tmp_path):
    cases = [(str(tmp_path), "is a directory"), (str(tmp_path / "file.txt" / "r.json"), "file.txt' is a file")]
    (tmp_path / "file.txt").write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if not os.access(locked, os.W_OK):  # not root: permissions apply
        cases.append((str(locked / "r.json"), "is not writable"))
    for out, message in cases:
        result = clreg("run", "--tasks", "1", "--epochs", "1", "--hidden", "5", "--data-dir", "/nonexistent-data",
                       "--out", out)
        assert result.returncode == 2 and message in result.stderr, (out, result.stderr)


def test_methods_lists_every_registry_name():
    from clreg.importance import REGISTRY

    out = clreg("methods").stdout.splitlines()
    names = [line.split()[0] for line in out if not line.startswith(" ")]
    assert names == list(REGISTRY) + ["ewc"]
    sos = out.index(next(line for line in out if line.startswith("sos ")))
    assert out[sos + 1].split()[0] == "--alpha" and "[default: 0.0]" in out[sos + 1]


MEASURE_WITH_AN_OPTION = """
import sys, torch
from clreg import importance
from clreg.importance import ImportanceMeasure
from clreg.core.options import Option

@importance.register
class Scaled(ImportanceMeasure):
    name = "scaled"
    description = "omega = scale * theta^2"
    settings = (Option("scale", float, 1.0, "the factor", minimum=0.0, above=True),)

    def __init__(self, scale=1.0):
        self.scale = scale

    def task_importance(self, params, sample):
        return [self.scale * p.detach() ** 2 for p in params]

from clreg.train.config import RunConfig
from clreg.cli.commands import main
a, b = RunConfig(method="scaled"), RunConfig(method="scaled", scale=2)
print("KEYS", a.key() != b.key(), a.canonical()["scale"], b.measure_options())
main()
"""


def test_a_measure_declares_its_option_once(tmp_path):
    """A measure registered with one declared option gets a config field, a key entry, a validated CLI flag
    and a `clreg methods` line, with nothing else written."""
    def run(*args):
        return subprocess.run([sys.executable, "-c", MEASURE_WITH_AN_OPTION, *args], capture_output=True, text=True,
                              timeout=HANG)

    methods = run("methods")
    assert "KEYS True 1.0 {'scale': 2.0}" in methods.stdout
    assert re.search(r"\n {19}--scale +the factor \[default: 1\.0\]\n", methods.stdout), methods.stdout
    bad = run("run", "--method", "scaled", "--scale", "0")
    assert bad.returncode == 2 and "Invalid value for '--scale': must be > 0, got 0.0" in bad.stderr
    good = run("run", "--benchmark", "permuted-digits", "--method", "scaled", "--scale", "3", "--c", "1", "--tasks", "2",
               "--epochs", "1", "--hidden", "20", "--quiet", "--out", str(tmp_path / "r.json"))
    assert good.returncode == 0, good.stderr
    assert json.loads((tmp_path / "r.json").read_text())["config"]["scale"] == 3.0


def test_missing_data_is_one_clear_error(tmp_path):
    env = {"CLREG_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = clreg("run", "--tasks", "1", "--data-dir", str(tmp_path), env=env)
    assert result.returncode == 1
    assert "train-images-idx3-ubyte.gz" in result.stderr and "t10k-labels-idx1-ubyte.gz" in result.stderr


@pytest.mark.slow
def test_run_writes_json(tmp_path, mnist_dir):
    out = tmp_path / "run.json"
    result = clreg("run", "--method", "sos", "--c", "1", "--tasks", "2", "--epochs", "1", "--hidden", "50",
                   "--batch-size", "1024", "--data-dir", str(mnist_dir), "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    for key in ("config", "accuracy_matrix", "average_accuracy", "forgetting", "bwt", "timing", "versions"):
        assert key in data
    assert set(data["timing"]) >= {"train_seconds", "importance_seconds"}
    assert set(data["versions"]) >= {"python", "torch", "clreg", "git_revision"}
    assert data["command"].startswith("clreg run --method sos --c 1") and data["machine"]["cpu_count"] >= 1
    a = data["accuracy_matrix"]
    assert len(a) == 2 and all(0 <= v <= 1 for row in a for v in row) and a[1][1] > 0.8
    assert "after \\ on" in result.stdout and "average accuracy" in result.stdout


@pytest.mark.slow
def test_demo_regularisers_beat_finetuning():
    result = clreg("demo")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: float(line.split()[2].rstrip("%")) for line in result.stdout.splitlines()[2:]}
    assert set(rows) == {"finetune", "ewc", "si", "sos", "mas"}
    for method in ("ewc", "si", "sos", "mas"):
        assert rows[method] > rows["finetune"] + 10, rows


@pytest.mark.slow
def test_debiased_revisit_and_proxy_losses_end_to_end(tmp_path):
    out = tmp_path / "r.json"
    result = clreg("run", "--benchmark", "permuted-digits", "--method", "ewc", "--c", "20", "--tasks", "3",
                   "--epochs", "3", "--batch-size", "32", "--hidden", "50", "--lr", "0.001", "--penalty", "debiased",
                   "--revisit", "--proxy-every", "20", "--proxy-samples", "200", "--quiet", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "revisit: task 1's penalty dropped" in result.stdout and "Pearson r =" in result.stdout
    record = json.loads(out.read_text())
    revisit, first_time = record["revisit"], record["accuracy_matrix"][0][0]
    # task 1, forgotten in part, is learned again as well as the first time (seed 0: 80.5% -> 88.6%, first 86.6%)
    assert revisit["accuracy_after"][0] > revisit["accuracy_before"][0] + 0.03
    assert revisit["accuracy_after"][0] >= first_time - 0.02
    records = record["proxy_losses"]["records"]
    assert {e["task"] for r in records for e in r["tasks"]} == {0, 1, 2}  # every consolidated task (2 while revisiting)
    assert record["proxy_losses"]["correlation_proxy_vs_loss_increase"] > 0.3


def test_run_on_user_arrays_end_to_end(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=rng.integers(0, 256, (200, 6, 6), dtype=np.uint8), y_train=rng.integers(0, 4, 200),
             x_test=rng.integers(0, 256, (40, 6, 6), dtype=np.uint8), y_test=rng.integers(0, 4, 40))
    out = tmp_path / "r.json"
    result = clreg("run", "--benchmark", f"arrays:{path}", "--permute", "3", "--method", "ewc", "--c", "1",
                   "--epochs", "1", "--batch-size", "32", "--quiet", "--out", str(out))
    assert result.returncode == 0, result.stderr
    saved = json.loads(out.read_text())
    assert len(saved["accuracy_matrix"]) == 3 and saved["benchmark"]["name"] == f"arrays:{path}"
    assert saved["config"]["network"] == "mlp" and saved["config"]["hidden"] == [400, 400]


@pytest.mark.slow
def test_analyses_share_one_run_and_resume_from_the_cli(tmp_path):
    import numpy as np

    rng = np.random.default_rng(1)
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=rng.integers(0, 256, (120, 3, 3), dtype=np.uint8), y_train=rng.integers(0, 4, 120),
             x_test=rng.integers(0, 256, (40, 3, 3), dtype=np.uint8), y_test=rng.integers(0, 4, 40))
    args = ["analyze", "measures", "--benchmark", f"arrays:{path}", "--permute", "2", "--hidden", "8",
            "--epochs", "1", "--batch-size", "20", "--samples", "30", "--scatter-points", "50", "--quiet",
            "--out-dir", str(tmp_path / "out")]
    refused = clreg(*args, "--resume")
    assert refused.returncode == 2 and "--resume needs --checkpoint FILE" in refused.stderr
    bias_args = ["--also", "bias", "--every", "2", "--record-every", "2"]
    result = clreg(*args, *bias_args, "--checkpoint", str(tmp_path / "a.pt"))
    assert result.returncode == 0, result.stderr
    assert "# clreg analyze measures" in result.stdout and "# clreg analyze bias" in result.stdout
    measures = json.loads((tmp_path / "out" / "measures" / "measures.json").read_text())
    bias = json.loads((tmp_path / "out" / "bias" / "bias.json").read_text())
    assert measures["accuracy_matrix"] == bias["accuracy_matrix"] and measures["analyses_on_this_run"] == [
        "measures", "bias"] and measures["device"]["type"] == "cpu"
    for m, b in zip(measures["tasks"], bias["tasks"]):  # one head: the same parameters, one trajectory
        assert m["sums"]["si-raw-noclip"] / m["sums"]["siu-raw-noclip"] == pytest.approx(b["ratio_si_to_siu"],
                                                                                          rel=1e-6)
    other = clreg(*args, "--also", "noise", "--checkpoint", str(tmp_path / "a.pt"), "--resume")
    assert other.returncode == 2 and "resume with the same analyses" in other.stderr
    assert "analyze measures --benchmark arrays:" in bias["parts"][0]["command"]  # each part names its command
    assert bias["options"]["record_every"] == 2 and all(
        step % 2 == 0 or step % task["steps_per_epoch"] == 0 for task in bias["tasks"] for step in task["steps"])
    extended = clreg(*args, *bias_args, "--extend")  # complete: returned as it is
    assert extended.returncode == 0, extended.stderr
    assert json.loads((tmp_path / "out" / "bias" / "bias.json").read_text()) == bias
    wrong = clreg(*args, "--also", "bias", "--every", "3", "--extend")
    assert wrong.returncode == 2 and "with other options: every 2 there, 3 here, record_every 2 there, 1 here" \
        in wrong.stderr
