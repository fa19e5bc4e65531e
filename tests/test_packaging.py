"""What an install needs and what the command says about itself: the core install (torch, numpy) is enough for
`clreg.Regularizer`; every optional dependency fails in one line naming its extra; a bare `clreg` is help; no
user-facing text cites the project's internal notes; the default thread count follows the idle cores."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("matplotlib", "sklearn", "scipy", "pooch", "click", "yaml", "tqdm")

# Two tasks of EWC and SI on a tiny nn.Linear, the step fused (`reg.step`: the native kernel where it builds,
# whose build cache must not need pooch): the same numbers with and without the optional dependencies.
TRAIN = """
import torch
import torch.nn.functional as F
from torch import nn
from clreg import Regularizer

def train(method):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    reg = Regularizer(model, method, c=1.0)
    for task in range(2):
        x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
        for _ in range(3):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            reg.step(optimizer)
        reg.end_task(x)
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    reg.step(optimizer)  # one step away from the anchor: a penalty > 0
    return [float(reg.penalty().detach())] + [float(p.detach().double().sum()) for p in model.parameters()]
"""

# None in sys.modules: `import name` raises ModuleNotFoundError and importlib.util.find_spec says None, as for a
# package that is not installed
WITHOUT_EXTRAS = f"""
import sys
sys.modules.update(dict.fromkeys({BLOCKED!r}))
""" + TRAIN + """
import importlib, json, pkgutil
import clreg
from clreg.core.extras import MissingExtra

def message(call):
    try:
        call()
    except MissingExtra as err:
        return str(err)
    return "no error"

def script():
    from clreg.cli import main
    try:
        main()
    except SystemExit as exit:
        return str(exit.code)
    return "no exit"

from clreg.analysis.plots import pyplot
from clreg.data.digits import load_digits
from clreg.data.fetch import download_archive
from clreg.train.config import read_run_file
from clreg.sweeps.spec import load_spec

# every module imports without the extras, except the command line's and the integrations' (their own extras)
skip = ("clreg.cli.commands", "clreg.integrations.lightning", "clreg.integrations.transformers")
failed = []
for module in pkgutil.walk_packages(clreg.__path__, "clreg."):
    if module.name not in skip:
        try:
            importlib.import_module(module.name)
        except Exception as err:
            failed.append(f"{module.name}: {err}")
print(json.dumps({"ewc": train("ewc"), "si": train("si"), "failed": failed,
                  "messages": {"plots": message(pyplot), "digits": message(load_digits),
                               "data": message(lambda: download_archive("x", None)),
                               "run file": message(lambda: read_run_file("run.yaml")),
                               "sweep file": message(lambda: load_spec("sweep.yaml")), "script": script()}}))
"""


@pytest.mark.slow  # a fresh interpreter importing torch and every clreg module: about 4 s of CPU
def test_core_install_trains_and_each_extra_is_named_in_one_line():
    p = subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["failed"] == []
    namespace: dict = {}
    exec(TRAIN, namespace)  # the reference: the same steps here, with every dependency installed
    for method in ("ewc", "si"):
        assert out[method] == namespace["train"](method)
        assert out[method][0] > 0  # the step moved the weights off the anchor of a measured importance
    expected = {"plots": "matplotlib", "digits": "scikit-learn", "data": "pooch", "run file": "PyYAML",
                "sweep file": "PyYAML", "script": "click"}
    for what, package in expected.items():
        extra = {"plots": "plots", "digits": "digits", "data": "data"}.get(what, "cli")
        text = out["messages"][what]
        assert "\n" not in text and package in text and f"pip install 'clreg[{extra}]'" in text, (what, text)
    assert out["messages"]["script"].startswith("clreg: error: ")


def test_every_extra_is_declared_and_dev_has_them_all():
    """The extras the messages name exist, `all` holds every extra, and `dev` (the tests' install) holds `all`."""
    import tomllib

    from clreg.core.extras import EXTRAS

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert {name.split(">")[0].split("=")[0] for name in project["dependencies"]} == {"torch", "numpy"}
    for package, extra in EXTRAS.values():
        assert any(d.lower().startswith(package.lower()) for d in extras[extra]), (package, extra)
    everything = re.fullmatch(r"clreg\[(.*)\]", extras["all"][0]).group(1).split(",")
    assert set(everything) == set(extras) - {"all", "dev"}
    assert "clreg[all]" in extras["dev"]


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n# [^\n]*\n(python3 -m venv[^\n]*)\n```", (ROOT / "README.md").read_text())


def test_readme_commands_install_what_they_use():
    """The README's main job installs the extras the demo needs; its test command is what CI (.ci/run) runs."""
    main_job, tests = readme_commands()
    assert "-c constraints.txt -e '.[cli,digits]'" in main_job and main_job.endswith("clreg demo")
    assert "-c constraints.txt -e '.[dev]'" in tests
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


def call_clreg(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    from clreg.cli import main

    monkeypatch.setattr(sys, "argv", ["clreg", *args])
    code = 0
    try:
        main()
    except SystemExit as exit:
        code = exit.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("args", [(), ("analyze",), ("store",)])
def test_bare_command_prints_help_without_error_framing(monkeypatch, capsys, args):
    code, out, err = call_clreg(monkeypatch, capsys, *args)
    assert code == 2 and "error:" not in out + err
    assert (out + err).startswith(f"Usage: clreg {' '.join(args)}".rstrip() + " [OPTIONS] COMMAND")


INTERNAL = re.compile(r"\bSPEC\b|(?i:\bthe specification\b|project's (specification|issue)|\bthe issue\b)")


def user_facing_texts():
    """Every string and docstring under src/clreg, the docs, the README and the sweep files' headers."""
    import ast

    for path in sorted((ROOT / "src" / "clreg").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                yield f"{path.relative_to(ROOT)}:{node.lineno}", node.value
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "experiments" / "sweeps").glob("*.yaml"))]:
        yield str(path.relative_to(ROOT)), path.read_text()


def test_no_user_facing_text_cites_internal_notes():
    """Users are pointed to docs/ (e.g. docs/algorithms.md §5), never to the project's internal specification."""
    cited = [f"{where}: {match.group(0)!r}" for where, text in user_facing_texts()
             for match in [INTERNAL.search(" ".join(text.split()))] if match]
    assert cited == []


def test_internal_note_check_catches_a_citation():
    assert INTERNAL.search("the c of SPEC §5") and INTERNAL.search("as in the project's issue")
    assert INTERNAL.search(" ".join("see the\n   specification".split()))
    assert not INTERNAL.search("a stored sweep specification") and not INTERNAL.search("SPEC_VALUES")


@pytest.mark.parametrize("cores, load, share, expected", [(2, 1.2, 1, 1), (2, 0.4, 1, 2), (2, 3.7, 1, 1),
                                                          (16, 3.6, 1, 12), (16, 3.4, 2, 6), (16, 0.0, 4, 4)])
def test_default_threads_are_the_idle_cores(monkeypatch, cores, load, share, expected):
    from clreg.core import threads

    monkeypatch.setattr(threads.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (load, 0.0, 0.0))
    assert threads.choose_threads(None, share) == (expected, "idle cores")
    assert threads.choose_threads(3, share) == (3, "--threads")  # an explicit count wins


def test_default_threads_without_a_load_average(monkeypatch):
    import torch

    from clreg.core import threads

    def unavailable():
        raise OSError("no load average")

    monkeypatch.setattr(threads.os, "getloadavg", unavailable)
    assert threads.choose_threads(None) == (torch.get_num_threads(), "torch's default")


def test_run_header_says_the_threads(monkeypatch, capsys, tmp_path):
    """`clreg run` sets torch's threads from the idle cores and says so in its header; --threads wins."""
    import torch

    from clreg.core import threads

    before = torch.get_num_threads()
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.6, 0.0, 0.0))
    try:
        code, out, err = call_clreg(monkeypatch, capsys, "run", "--benchmark", "permuted-digits", "--tasks", "2",
                                    "--epochs", "1", "--quiet", "--method", "finetune")
        assert "threads: 2 (idle cores)" in err and torch.get_num_threads() == 2, err
        code, out, err = call_clreg(monkeypatch, capsys, "run", "--benchmark", "permuted-digits", "--tasks", "2",
                                    "--epochs", "1", "--quiet", "--method", "finetune", "--threads", "1")
        assert "threads: 1 (--threads)" in err and torch.get_num_threads() == 1, err
    finally:
        torch.set_num_threads(before)
