"""Settings: every number is finite and within its declared range, checked in one place (Option.parse), on the
command line, in run files and in Python alike; errors name flags on the command line and keywords in Python."""
from __future__ import annotations

import json
import re

import pytest
import torch

from clreg import importance
from clreg.cli import commands
from clreg.core.options import MAX_THREADS, Option, SettingError, finite_number
from clreg.regularizer import Regularizer
from clreg.train import optim
from clreg.train.config import OPTIONS, RunConfig, read_run_file
from clreg_cli import invoke_err as invoke



NUMERIC = [o for o in OPTIONS if o.type in (int, float) or o.type.__name__.startswith(("number_or", "positive_"))]


@pytest.mark.parametrize("option", NUMERIC, ids=[o.name for o in NUMERIC])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", float("nan"), float("inf")])
def test_every_numeric_setting_refuses_non_finite_values(option, value):
    with pytest.raises(ValueError, match="must be"):
        option.parse(value)


def test_every_numeric_setting_declares_its_range():
    """A number without a declared bound is a setting whose meaning was not thought through."""
    unbounded = [o.name for o in OPTIONS if o.type in (int, float) and o.minimum is None]
    assert unbounded == []


@pytest.mark.parametrize("name, bad, good", [
    ("c", -0.1, 0.0), ("lr", 0.0, 1e-4), ("prior", -1.0, 0.0), ("decay", 0.0, 1.0), ("lr_gamma", 0.0, 1.0),
    ("lr_gamma", 1.5, 0.5), ("sos_alpha", -0.5, "auto"), ("xi", 0.0, 1e-3), ("seed", -1, 0),
    ("importance_samples", 0, 1), ("momentum", 1.5, 0.9), ("lr_min_factor", -0.1, 0.0)])
def test_declared_ranges(name, bad, good):
    option = next(o for o in OPTIONS if o.name == name)
    with pytest.raises(ValueError, match="must be"):
        option.parse(bad)
    assert option.parse(good) == good


@pytest.mark.parametrize("value,low,high,message", [
    (float("nan"), 0, 1, "must be a finite number, got nan"), (float("-inf"), None, None, "must be a finite number"),
    ("0.5", 0, 1, "must be a finite number, got '0.5'"), (True, 0, 1, "must be a finite number, got True"),
    (1.5, 0, 1, "must be in [0, 1], got 1.5"), (-0.1, 0.0, None, "must be >= 0, got -0.1"),
    (101, None, 100, "must be <= 100, got 101")])
def test_a_number_read_from_a_file_must_be_finite_and_in_its_bounds(value, low, high, message):
    """Files (sweep files, stored results) give numbers, never text or booleans; the bounds are inclusive."""
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        finite_number(value, low, high)
    assert finite_number(low if low is not None else 7, low, high) == (low if low is not None else 7.0)
    assert type(finite_number(1 if high is None or high >= 1 else 0, None, high)) is float


@pytest.mark.parametrize("settings", [dict(c=float("nan")), dict(lr=float("inf")), dict(prior=float("nan")),
                                      dict(method="sos", sos_alpha=float("nan")), dict(lr_gamma=float("nan"),
                                                                                       lr_schedule="step")])
def test_run_config_in_python_refuses_non_finite(settings):
    with pytest.raises(ValueError, match="finite"):
        RunConfig(benchmark="permuted-digits", **settings)


@pytest.mark.parametrize("text", ["c: .nan\n", "c: .inf\n", "lr: 1e400\n", "method: sos\nsos_alpha: .nan\n"])
def test_run_files_refuse_non_finite(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text("benchmark: permuted-digits\n" + text)
    with pytest.raises(ValueError, match="finite"):
        RunConfig.from_dict(read_run_file(path))


@pytest.mark.parametrize("args, flag", [
    (["run", "--c", "nan"], "--c"), (["run", "--lr", "inf"], "--lr"), (["run", "--prior", "1e400"], "--prior"),
    (["run", "--method", "sos", "--alpha", "nan"], "--alpha"), (["run", "--lr-gamma", "nan"], "--lr-gamma"),
    (["run", "--warn-after", "nan"], "--warn-after"), (["run", "--log-every", "0"], "--log-every"),
    (["run", "--nproc", "0"], "--nproc"), (["run", "--threads", "0"], "--threads"),
    (["sweep", "x.yaml", "--stale-after", "nan"], "--stale-after"), (["sweep", "x.yaml", "--stale-after", "-5"],
                                                                      "--stale-after"),
    (["sweep", "x.yaml", "--workers", "0"], "--workers"), (["sweep", "x.yaml", "--threads", "-1"], "--threads"),
    (["analyze", "measures", "--large-samples", "0"], "--large-samples"),
    (["analyze", "bias", "--record-every", "0"], "--record-every"), (["analyze", "noise", "--every", "nan"], "--every"),
    (["demo", "--seed", "nan"], "--seed")])
def test_command_line_numbers_are_checked_by_their_declaration(monkeypatch, capsys, args, flag):
    code, err = invoke(monkeypatch, capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and f"'{flag}'" in err, err


def test_threads_bounded_by_the_cores(monkeypatch, capsys):
    code, err = invoke(monkeypatch, capsys, "run", "--benchmark", "permuted-digits", "--threads", 100_000)
    assert code == 2 and f"must be at most {MAX_THREADS}" in err and "cores" in err, err


def test_library_and_command_line_name_the_same_setting_differently(monkeypatch, capsys):
    with pytest.raises(SettingError, match="^lr_min_factor applies to lr_schedule cosine only"):
        RunConfig(benchmark="permuted-digits", lr_schedule="step", lr_min_factor=0.5)
    code, err = invoke(monkeypatch, capsys, "run", "--benchmark", "permuted-digits", "--lr-schedule", "step",
                       "--lr-min-factor", "0.5")
    assert code == 2 and "--lr-min-factor applies to --lr-schedule cosine only" in err, err
    code, err = invoke(monkeypatch, capsys, "run", "--benchmark", "permuted-digits", "--stability-margin", "0.1")
    assert code == 2 and "--stability-margin applies to --lr-search only" in err, err
    code, err = invoke(monkeypatch, capsys, "run", "--benchmark", "permuted-digits", "--lr-search", "0.1", "--lr", "0.1")
    assert code == 2 and "--lr-search chooses each task's learning rate: leave --lr unset" in err, err


def test_lr_schedule_help_lists_every_schedule():
    param = next(p for p in commands.run.params if p.name == "lr_schedule")
    listed = param.help.split(":")[1].split("[")[0]
    assert all(name in listed for name in optim.SCHEDULES) and "plateau" in listed


def test_measures_take_keyword_or_setting_name():
    assert importance.create("fisher", fisher_mode="sampled").mode == importance.create("fisher", mode="sampled").mode \
        == "sampled"
    assert importance.create("sos", sos_alpha=0.25).alpha == 0.25 == importance.create("sos", alpha=0.25).alpha
    model = torch.nn.Linear(3, 2)
    assert Regularizer(model, "ewc", fisher_mode="empirical", fisher_draws=2).measure.draws == 2
    with pytest.raises(ValueError, match=r"mode \(fisher_mode, --fisher-mode\)"):
        importance.create("fisher", fisher_kind="exact")
    with pytest.raises(ValueError, match="given twice"):
        importance.create("fisher", mode="exact", fisher_mode="sampled")
    with pytest.raises(ValueError, match="finite"):
        importance.create("sos", alpha=float("nan"))


def test_replay_keeps_the_data_directory_and_data_dir_overrides_it(tmp_path):
    recorded, other = tmp_path / "recorded", tmp_path / "other"
    recorded.mkdir(), other.mkdir()
    config = RunConfig(benchmark="permuted-digits", data_dir=str(recorded), device="cpu").to_dict()
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"config": config, "accuracy_matrix": [[0.5]]}))
    assert read_run_file(result)["data_dir"] == str(recorded)
    assert "device" not in read_run_file(result)  # the device is left to this machine
    assert commands.make_config(str(result)).data_dir == str(recorded)
    assert commands.make_config(str(result), data_dir=str(other)).data_dir == str(other)


def test_a_missing_data_directory_is_said_first(monkeypatch, capsys, tmp_path):
    from clreg.data import load_mnist

    with pytest.raises(ValueError, match="^data_dir .*nowhere' does not exist"):
        load_mnist(tmp_path / "nowhere", download=False)
    code, err = invoke(monkeypatch, capsys, "run", "--benchmark", "permuted-mnist", "--data-dir", tmp_path / "nowhere")
    assert code == 2 and err.startswith("clreg: error: --data-dir") and "does not exist" in err, err
    assert len(err) < 200 and "download" not in err


def test_setting_error_renders_keywords_and_flags():
    err = SettingError("{0} needs {1} > 0 (got {{}})", Option("fisher_draws", int, 1, ""), "batch_size")
    assert str(err) == "fisher_draws needs batch_size > 0 (got {})"
    assert err.cli_message() == "--fisher-draws needs --batch-size > 0 (got {})"
