"""The documentation's examples run as written and do what they say; every link between pages resolves."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "docs" / "library.md"


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def test_library_example_runs(capsys):
    code = python_blocks(LIBRARY)[0]
    namespace: dict = {}
    exec(compile(code, str(LIBRARY), "exec"), namespace)
    reg = namespace["reg"]
    assert reg.penalty_term.tasks_consolidated == 3
    assert all(float(o.sum()) > 0 for o in reg.omega.values())  # SI measured some importance
    assert "weight" in capsys.readouterr().out


def test_writing_a_measure_example_registers_and_runs():
    """The 'writing a measure' example, run in a fresh interpreter: its option becomes a flag and a setting."""
    import subprocess
    import sys

    measure = next(block for block in python_blocks(LIBRARY) if "@importance.register" in block)
    script = measure + """
from types import SimpleNamespace
from clreg.train.config import RunConfig
from clreg.train.loop import Trainer, load_benchmark
config = RunConfig(benchmark="permuted-digits", method="grad-squared", gs_power=3, c=1.0, tasks=2, epochs=1,
                   device="cpu")
trainer = Trainer(config, load_benchmark(config), progress=False)
trainer.run()
print("OMEGA", all(float(o.sum()) > 0 for o in trainer.reg.omega.values()), config.canonical()["gs_power"])
# p = 3, where (g^2)^p = g^6 and g^(2^p) = g^8 differ: against g^6 written out
torch.manual_seed(0)
model, x = torch.nn.Linear(3, 2).double(), torch.randn(5, 3, dtype=torch.double)
omega = GradientSquared(power=3).task_importance(list(model.parameters()), SimpleNamespace(forward=None, model=model,
                                                                                           inputs=x))
grads = torch.autograd.grad(torch.logsumexp(model(x), 1).mean(), list(model.parameters()))
print("POWER", all(torch.allclose(o, g ** 6, rtol=1e-12, atol=0) for o, g in zip(omega, grads)))
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "OMEGA True 3.0" in p.stdout and "POWER True" in p.stdout, p.stdout + p.stderr


def test_links_between_pages_resolve():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name} links to {target}, which does not exist"
