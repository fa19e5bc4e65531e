"""Bad-input sweep (`python tests/bad_input_sweep.py`): the invalid invocations of tests/test_bad_input.py and
more, each classified by its outcome (the counts go into the closing notes of robustness work).
clean: exit 2, one line on stderr, no traceback; traceback: a traceback or an internal error;
accepted: exit 0; unclear: anything else (other exit codes, several lines), to be read by eye."""
import contextlib
import io
import json
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_bad_input import CASES, SPEC, import_file, make_files  # noqa: E402
from clreg.cli.commands import main  # noqa: E402

t = make_files(Path(tempfile.mkdtemp()))
(t / "empty.yaml").write_text("")
(t / "binary.yaml").write_bytes(bytes(range(256)))
(t / "zero.sqlite").write_bytes(b"")
(t / "list.json").write_text("[1, 2]")
(t / "number.json").write_text("3")
(t / "result-noconfig.json").write_text(json.dumps({"accuracy_matrix": [[0.9]]}))
weird = import_file(None)
weird["runs"][0]["status"] = "weird"
(t / "import-weird-status.json").write_text(json.dumps(weird))
for name, change in {"c-empty": "c: []", "c-neg": "c: -1", "method-unknown": "method: nope, c: 0.1",
                     "hidden-text": "method: si, c: 0.1, hidden: x"}.items():
    (t / f"spec-{name}.yaml").write_text(SPEC.replace("method: si, c: 0.1", change))
(t / "spec-seeds-neg.yaml").write_text(SPEC.replace("seeds: [0]", "seeds: [-1]"))
(t / "spec-bench.yaml").write_text(SPEC.replace("permuted-digits", "nope"))
(t / "spec-emptymethods.yaml").write_text(SPEC.split("methods:")[0] + "methods: {}\n")
(t / "spec-search.yaml").write_text(SPEC + "search: {evaluate_on: train}\n")
TINY = ["--benchmark", "permuted-digits", "--tasks", "2", "--epochs", "1", "--hidden", "8"]
MORE = [
    ["run", *TINY, "--epochs", "1.5"], ["run", *TINY, "--tasks", "-3"], ["run", *TINY, "--seed", "-1"],
    ["run", *TINY, "--seed", "1e3"], ["run", *TINY, "--batch-size", "1.5"], ["run", *TINY, "--lr", ""],
    ["run", *TINY, "--c", ""], ["run", *TINY, "--hidden", "8,,8"], ["run", *TINY, "--hidden", "8,-8"],
    ["run", *TINY, "--task-sizes", "a"], ["run", *TINY, "--samples", "-1"], ["run", *TINY, "--proxy-samples", "0"],
    ["run", *TINY, "--decay", "nan"], ["run", *TINY, "--decay", "-1"],
    ["run", *TINY, "--optimizer", "sgd", "--momentum", "2"], ["run", *TINY, "--optimizer", "foo"],
    ["run", *TINY, "--lr-schedule", "plateau", "--lr-gamma", "0"], ["run", *TINY, "--lr-min-factor", "2"],
    ["run", *TINY, "--device", "cuda"], ["run", *TINY, "--device", "tpu"], ["run", *TINY, "--precision", "bf17"],
    ["run", *TINY, "--precision", "tf32"], ["run", *TINY, "--network", "vgg-small"],
    ["run", "--benchmark", "split-cifar10", "--data-dir", str(t / "adir")],
    ["run", *TINY, "--config", str(t / "adir")], ["run", *TINY, "--config", str(t / "binary.yaml")],
    ["run", *TINY, "--config", str(t / "list.json")], ["run", *TINY, "--threads", "-1"],
    ["run", *TINY, "--threads", "abc"], ["run", *TINY, "--nproc", "100000"], ["run", *TINY, "--log-every", "-5"],
    ["run", *TINY, "--tensorboard", str(t / "afile")], ["run", *TINY, "--out", ""],
    ["run", *TINY, "--checkpoint", ""], ["run", *TINY, "--split-classes", "-1"], ["run", *TINY, "--permute", "0"],
    ["run", *TINY, "--method", "ewc", "--fisher-mode", "bogus"], ["run", *TINY, "--method", "sos", "--alpha", "-1"],
    ["run", *TINY, "--penalty", "separate", "--decay", "0.5"], ["run", *TINY, "--equal-iter", "yes"],
    ["sweep", str(t / "spec.yaml"), "--workers", "100000"], ["sweep", str(t / "spec.yaml"), "--threads", "0"],
    ["sweep", str(t / "spec.yaml"), "--backend", "foo"], ["sweep", str(t / "spec.yaml"), "--device", "cuda"],
    ["sweep", str(t / "spec.yaml"), "--checkpoint-dir", str(t / "afile")],
    ["sweep", str(t / "spec.yaml"), "--vectorize", "0"], ["sweep", str(t / "spec.yaml"), "--vectorize", "-1"],
    ["sweep", str(t / "spec.yaml"), "--seeds", "0"], ["sweep", str(t / "spec.yaml"), "--seeds", "-1"],
    ["sweep", str(t / "spec.yaml"), "--seeds", "1,,2"], ["sweep", str(t / "spec.yaml"), "--only", ""],
    ["sweep", str(t / "spec.yaml"), "--max-runs", "0"], ["sweep", str(t / "spec-c-empty.yaml")],
    ["sweep", str(t / "spec-c-neg.yaml")], ["sweep", str(t / "spec-method-unknown.yaml")],
    ["sweep", str(t / "spec-hidden-text.yaml")], ["sweep", str(t / "spec-seeds-neg.yaml")],
    ["sweep", str(t / "spec-bench.yaml")], ["sweep", str(t / "spec-emptymethods.yaml")],
    ["sweep", str(t / "spec-search.yaml")], ["sweep", str(t / "empty.yaml")], ["sweep", str(t / "adir")],
    ["sweep", str(t / "binary.yaml")],
    ["report", str(t / "zero.sqlite")], ["report", str(t / "afile")],
    ["store", "import", str(t / "s2.sqlite")], ["store", "import", str(t / "s2.sqlite"), str(t / "adir")],
    ["store", "import", str(t / "s2.sqlite"), str(t / "list.json")],
    ["store", "import", str(t / "s2.sqlite"), str(t / "number.json")],
    ["store", "import", str(t / "s2.sqlite"), str(t / "result-noconfig.json")],
    ["store", "import", str(t / "s2.sqlite"), str(t / "import-weird-status.json")],
    ["store", "import", str(t / "adir"), str(t / "import-pending.json")],
    ["store", "verify", str(t / "adir")], ["store", "verify", str(t / "zero.sqlite")], ["store", "verify"],
    ["analyze", "measures", "--pairs", "bogus"], ["analyze", "bias", "--every", "0"],
    ["analyze", "noise", "--record-every", "0"], ["analyze", "measures", "--scatter-points", "0"],
    ["analyze", "measures", "--threads", "0"], ["demo", "--threads", "100000"], ["demo", "--seed", "-1"],
    ["methods", "--foo"], ["benchmarks", "extra"], ["nonexistent-command"], ["run", "--benchmark"],
]
ALL = [[a.format(t=t) for a in args] for args, _ in CASES] + MORE
counts = {"clean": 0, "unclear": 0, "traceback": 0, "accepted": 0}
for args in ALL:
    sys.argv = ["clreg", *args]
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), warnings.catch_warnings():
        try:
            main()
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException as e:  # noqa: BLE001
            code, _ = -1, err.write(f"Traceback (escaped main): {e!r}")
    text = err.getvalue()
    lines = [line for line in text.splitlines() if line.strip()]
    kind = ("traceback" if "Traceback" in text or "internal error" in text or code == -1 else
            "accepted" if code == 0 else "clean" if code == 2 and len(lines) == 1 else "unclear")
    counts[kind] += 1
    print(f"{kind:<9} {code:>3} clreg {' '.join(args).replace(str(t), 'T')[:90]}\n          "
          + (lines[-1] if lines else '(no stderr)')[:220].replace(str(t), 'T'))
print("tried", len(ALL), counts)
