"""The README's library example runs as written and does what it says."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_library_example_runs(capsys):
    text = README.read_text()
    section = text[text.index("## Library"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    reg = namespace["reg"]
    assert reg.penalty_term.tasks_consolidated == 3
    assert all(float(o.sum()) > 0 for o in reg.omega.values())  # SI measured some importance
    assert "weight" in capsys.readouterr().out
