"""The analyses: streamed statistics against numpy, SI's bias on a problem whose full gradient is known,
side-by-side measures against the trained method's own, and the figures."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clreg.analysis import ScatterSample, StreamingCorrelation, analyze, analyze_together, slope_through_origin
from clreg.analysis import stats
from clreg.analysis.bias import BiasProbe, thin_record
from clreg.analysis.measures import MeasuresProbe, measure_names, parse_pairs
from clreg.analysis.probe import Probes, full_gradient
from clreg.train.checkpoint import CheckpointError
from clreg.train.callbacks import Callback
from clreg.benchmarks import build_benchmark
from clreg.train.config import RunConfig
from clreg.train.loop import Trainer


def test_streaming_correlation_equals_numpy(monkeypatch):
    monkeypatch.setattr(stats, "CHUNK", 7)  # many blocks per tensor
    rng = np.random.default_rng(0)
    shapes = [(5, 4), (13,), (3, 3, 3)]
    base = [rng.normal(size=s) for s in shapes]
    measures = [[b + 1e4 for b in base], [2 * b + rng.normal(size=b.shape) for b in base],
                [rng.exponential(size=b.shape) for b in base]]  # a large mean: the shift keeps it exact
    corr = StreamingCorrelation(["a", "b", "c"])
    for i in range(len(shapes)):
        corr.update([torch.tensor(m[i], dtype=torch.float32) for m in measures])
    flat = np.array([np.concatenate([x.astype(np.float32).astype(np.float64).ravel() for x in m]) for m in measures])
    np.testing.assert_allclose(corr.matrix(), np.corrcoef(flat), rtol=1e-9, atol=1e-12)
    assert corr.n == 20 + 13 + 27 and corr.as_dict()["a"]["b"] == pytest.approx(np.corrcoef(flat)[0, 1])
    with pytest.raises(ValueError, match="expected 3 measures, got 2"):
        corr.update([torch.zeros(2), torch.zeros(2)])


def test_scatter_sample_is_seeded_and_takes_the_right_positions():
    tensors = [torch.arange(10.0).reshape(2, 5), torch.arange(100.0, 107.0)]
    a, b = ScatterSample([10, 7], 6, seed=3), ScatterSample([10, 7], 6, seed=3)
    assert np.array_equal(a.index, b.index) and not np.array_equal(a.index, ScatterSample([10, 7], 6, seed=4).index)
    flat = torch.cat([t.reshape(-1) for t in tensors]).numpy()
    assert np.array_equal(a.take(tensors), flat[a.index])
    assert slope_through_origin(np.array([1.0, 2.0]), np.array([2.0, 4.0])) == pytest.approx(2.0)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.mark.parametrize("device", DEVICES)
def test_streaming_state_stays_in_float64_on_the_inputs_device(monkeypatch, device):
    monkeypatch.setattr(stats, "CHUNK", 5)
    rng = np.random.default_rng(1)
    shapes = [(4, 3), (7,)]
    measures = [[rng.normal(size=s) + 1e3 for s in shapes], [rng.exponential(size=s) for s in shapes]]
    tensors = [[torch.tensor(x, dtype=torch.float64, device=device) for x in m] for m in measures]
    corr = StreamingCorrelation(["a", "b"])
    for i in range(len(shapes)):
        corr.update([m[i] for m in tensors])
    for state in (corr.shift, corr.sum, corr.cross):
        assert state.dtype == torch.float64 and state.device == tensors[0][0].device
    flat = np.array([np.concatenate([x.ravel() for x in m]) for m in measures])
    np.testing.assert_allclose(corr.matrix(), np.corrcoef(flat), rtol=1e-9, atol=1e-12)
    sample = ScatterSample([12, 7], 8, seed=2)
    assert np.array_equal(sample.take(tensors[1]), flat[1][sample.index])
    assert [index.device for index in sample.on_device[tensors[1][0].device]] == [tensors[1][0].device] * 2

    probe = BiasProbe(every=2)
    params = [t.clone() for t in tensors[0]]
    probe.task_started(SimpleNamespace(reg=SimpleNamespace(params=params), steps_per_epoch=lambda task: 4), 0)
    steps = [[[torch.tensor(rng.normal(size=s), dtype=torch.float64, device=device) for s in shapes]
              for _ in range(3)] for _ in range(4)]  # per step: g_t, g'_t, Δ_t
    for grads, independent, delta in steps:
        probe.stepped(None, grads, independent, delta)
        assert probe.sums.dtype == torch.float64 and probe.sums.device == params[0].device
    def dot(a, b):
        return sum(float(np.dot(x.cpu().numpy().ravel(), y.cpu().numpy().ravel())) for x, y in zip(a, b))
    si = np.cumsum([-dot(g, d) for g, _, d in steps])
    siu = np.cumsum([-dot(u, d) for _, u, d in steps])
    totals = probe.flush()
    assert probe.current["steps"] == [1, 2, 3, 4]
    np.testing.assert_allclose(probe.current["si"], si, rtol=1e-12)
    np.testing.assert_allclose(probe.current["sib"], si - siu, rtol=1e-9)
    assert totals["siu"] == pytest.approx(siu[-1], rel=1e-12) and probe.pending == []


def blob_file(path, classes: int, train: int, test: int, seed: int) -> str:
    """Gaussian blobs in 6 dimensions, one per class, as an arrays: benchmark."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, 6)) * 2
    y_train, y_test = rng.integers(0, classes, train), rng.integers(0, classes, test)
    np.savez(path, x_train=(centres[y_train] + rng.normal(size=(train, 6))).astype(np.float32), y_train=y_train,
             x_test=(centres[y_test] + rng.normal(size=(test, 6))).astype(np.float32), y_test=y_test)
    return f"arrays:{path}"


@pytest.fixture
def blobs(tmp_path):
    return blob_file(tmp_path / "blobs.npz", 4, 400, 100, seed=0)


@pytest.fixture
def blobs8(tmp_path):
    """Eight classes: four tasks of two."""
    return blob_file(tmp_path / "blobs8.npz", 8, 640, 160, seed=1)


def config(benchmark, **kw):
    return RunConfig(**{**dict(benchmark=benchmark, split_classes=2, method="si", c=0.0, epochs=2, batch_size=20,
                               hidden=[12], lr=1e-2, importance_samples=50), **kw})


def test_full_gradient_is_the_gradient_of_the_whole_training_set(blobs):
    cfg = config(blobs)
    bench = build_benchmark(cfg.benchmark, None, 0, "test", split_classes=2)
    trainer = Trainer(cfg, bench, callbacks=[Probes([])])
    loss, grads = full_gradient(trainer, 1, chunk=7)
    x, y = bench.tasks[1].train.x, bench.tasks[1].train.y
    expected = F.cross_entropy(trainer.model(x, 1), y)
    reference = torch.autograd.grad(expected, [*trainer.reg.params, *trainer.model.heads[1].parameters()])
    assert loss == pytest.approx(float(expected.detach()), rel=1e-5)
    for g, r in zip(grads, reference):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("lr", [1e-3, 2.5e-4])
def test_full_gradient_path_integral_is_the_loss_decrease_to_first_order(blobs, lr):
    cfg = config(blobs, lr=lr, epochs=3)
    bench = build_benchmark(cfg.benchmark, None, 0, "test", split_classes=2)
    probe = BiasProbe(every=1)
    Trainer(cfg, bench, progress=False, callbacks=[Probes([probe])]).run()
    for task in probe.tasks:
        decrease, path = task["loss_decrease"], task["full_gradient_path"]
        assert decrease > 0 and abs(path - decrease) < 0.03 * decrease * (lr / 1e-3)  # error O(lr²)
        trapezoid = task["full_gradient_path_trapezoid"]
        assert abs(trapezoid - decrease) < 0.2 * abs(path - decrease)  # error O(lr³)
        s = task["totals"]
        assert s["si"] - s["siu"] == pytest.approx(s["sib"], rel=1e-5, abs=1e-9)


@pytest.mark.slow
def test_the_bias_record_every_r_steps_is_the_full_record_at_those_steps(blobs, tmp_path):
    """Tasks of 8 and 9 steps per epoch, 2 epochs: r = 3 keeps every third step and each epoch's last."""
    cfg = config(blobs, c=0.5)
    full = analyze("bias", cfg, tmp_path / "full", every=5, progress=False)
    thinned = analyze("bias", cfg, tmp_path / "thin", every=5, progress=False, record_every=3)
    kept = [[3, 6, 8, 9, 12, 15, 16], [3, 6, 9, 12, 15, 18]]
    for ours, theirs, steps in zip(thinned["tasks"], full["tasks"], kept):
        assert ours["steps"] == steps and theirs["steps"] == list(range(1, steps[-1] + 1))
        at = [theirs["steps"].index(step) for step in ours["steps"]]
        for name in ("si", "siu", "sib"):  # the same trajectory: the very numbers of those steps
            assert ours[name] == [theirs[name][i] for i in at] and ours[name][-1] == ours["totals"][name]
        assert ours["checkpoints"] == theirs["checkpoints"] and thin_record(theirs, 3, theirs["steps_per_epoch"]) == ours
    assert thinned["options"]["record_every"] == 3

    path = tmp_path / "full" / "bias.json"  # a record from before the option: every step, and so record_every 1
    older = json.loads(path.read_text())
    del older["options"]["record_every"]
    for task in older["tasks"]:
        del task["steps"], task["steps_per_epoch"]
    path.write_text(json.dumps(older))
    assert analyze("bias", cfg, tmp_path / "full", every=5, progress=False, extend=True) == older
    assert thin_record(older["tasks"][0], 3, 8) == thinned["tasks"][0]
    with pytest.raises(ValueError, match="other options: record_every 1 there, 3 here"):
        analyze("bias", cfg, tmp_path / "full", every=5, progress=False, extend=True, record_every=3)
    with pytest.raises(ValueError, match="recorded every r >= 1 steps, got 0"):
        BiasProbe(every=5, record_every=0)


def test_a_task_ended_early_records_its_last_step(blobs):
    class StopAfter(Callback):
        def on_step(self, trainer, step):
            trainer.stop_task = step.task_step == 7

    cfg = config(blobs)
    probe = BiasProbe(every=100, record_every=5)
    Trainer(cfg, build_benchmark(cfg.benchmark, None, 0, "test", split_classes=2), progress=False,
            callbacks=[Probes([probe]), StopAfter()]).run()
    for task in probe.tasks:
        assert task["steps"] == [5, 7] and task["si"][-1] == task["totals"]["si"]


def test_side_by_side_si_equals_the_trained_method(blobs):
    cfg = config(blobs, c=0.5)
    bench = build_benchmark(cfg.benchmark, None, 0, "test", split_classes=2)
    probe = MeasuresProbe(xi=0.1, samples=50, scatter_points=30)
    trainer = Trainer(cfg, bench, progress=False, callbacks=[Probes([probe])])
    trainer.train_task(0)
    side = probe.importances(trainer, 0)
    assert list(side) == measure_names()  # what --pairs may name is what is computed
    with pytest.raises(ValueError, match="NAME one of si, si-noclip.*got si:fisher@10"):
        parse_pairs("si:fisher@10")
    assert parse_pairs("si:fisher@10", large_samples=10) == (("si", "fisher@10"),)
    for ours, theirs in zip(side["si"], trainer.reg.last_importance.values()):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-7)
    assert probe.tasks[0]["correlation"]["si"]["si"] == pytest.approx(1.0)
    assert set(probe.tasks[0]["pairs"]) >= {"si vs sos", "mas vs sqrt-fisher"}


@pytest.mark.slow
def test_every_analysis_writes_its_data_figures_and_summary(blobs, tmp_path):
    from PIL import Image

    for kind in ("measures", "bias", "noise"):
        out = tmp_path / kind
        data = analyze(kind, config(blobs), out, every=3, large_samples=80, scatter_points=200, progress=False)
        assert (out / f"{kind}.json").stat().st_size > 0 and "| " in (out / "summary.md").read_text()
        pngs = [out / f for f in data["figures"] if f.endswith(".png")]
        assert pngs and all(p.stat().st_size > 5000 for p in pngs)
        for png in pngs:
            width, height = Image.open(png).size
            assert 300 < width < 3000 and 250 < height < 3000
        assert all((out / f).read_text().lstrip().startswith("<?xml") for f in data["figures"] if f.endswith(".svg"))
    assert len(data["records"]) == 2 * 2 * (180 // 20) // 3 and 0 <= data["summary"]["fraction_above"]["1"] <= 1


def _records(data: dict) -> dict:
    """What an analysis measured, without its timings."""
    return {k: v for k, v in data.items() if k not in ("wall_seconds", "timing", "analyses_on_this_run", "parts")}


@pytest.mark.slow
def test_analyses_together_record_what_each_records_alone(blobs, tmp_path):
    cfg = config(blobs, c=0.5)
    kinds = ("measures", "bias", "noise")
    together = analyze_together(kinds, cfg, {k: tmp_path / "together" / k for k in kinds}, every=3,
                                scatter_points=100, progress=False)
    for kind in kinds:
        alone = analyze(kind, cfg, tmp_path / kind, every=3, scatter_points=100, progress=False)
        assert _records(together[kind]) == _records(alone)
        assert together[kind]["analyses_on_this_run"] == list(kinds)
    with pytest.raises(ValueError, match="distinct names from measures, bias, noise; got bias, bias"):
        analyze_together(("bias", "bias"), cfg, {"bias": tmp_path}, progress=False)


@pytest.mark.slow
def test_an_interrupted_analysis_resumes_to_the_same_records(blobs, tmp_path, monkeypatch):
    cfg, kinds = config(blobs, c=0.5), ("measures", "bias")
    reference = analyze_together(kinds, cfg, {k: tmp_path / "ref" / k for k in kinds}, every=4,
                                 scatter_points=100, progress=False)
    checkpoint, dirs = tmp_path / "run.pt", {k: tmp_path / "resumed" / k for k in kinds}
    original = MeasuresProbe.task_ended

    def crash_in_task_2(self, trainer, task):
        if task == 1:
            raise KeyboardInterrupt
        original(self, trainer, task)
    monkeypatch.setattr(MeasuresProbe, "task_ended", crash_in_task_2)
    with pytest.raises(KeyboardInterrupt):
        analyze_together(kinds, cfg, dirs, every=4, scatter_points=100, progress=False, checkpoint=checkpoint)
    monkeypatch.setattr(MeasuresProbe, "task_ended", original)
    with pytest.raises(CheckpointError, match="other options: every 4 there, 5 here, record_every 1 there, 2 here"):
        analyze_together(kinds, cfg, dirs, every=5, scatter_points=100, progress=False, checkpoint=checkpoint,
                         resume=True, record_every=2)
    started, task_started = [], BiasProbe.task_started
    monkeypatch.setattr(BiasProbe, "task_started", lambda self, *a: (started.append(a[1]), task_started(self, *a)))
    resumed = analyze_together(kinds, cfg, dirs, every=4, scatter_points=100, progress=False,
                               checkpoint=checkpoint, resume=True)
    assert started == [1]  # only task 2 was trained again
    for kind in kinds:  # task 1's records came back from the checkpoint, task 2's were measured after it
        assert _records(resumed[kind]) == _records(reference[kind])
    for task in (1, 2):
        ours, theirs = np.load(dirs["measures"] / f"scatter-task{task}.npz"), \
            np.load(tmp_path / "ref" / "measures" / f"scatter-task{task}.npz")
        assert set(ours) == set(theirs) and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    with pytest.raises(ValueError, match="records of MeasuresProbe, BiasProbe, this run has BiasProbe"):
        analyze_together(("bias",), cfg, {"bias": tmp_path / "b"}, every=4, progress=False,
                         checkpoint=checkpoint, resume=True)


@pytest.mark.slow
def test_the_training_pass_gives_the_records_of_a_gradient_pass_of_its_own(blobs, tmp_path, monkeypatch):
    cfg, kinds = config(blobs, c=0.5), ("measures", "bias", "noise")
    reused = analyze_together(kinds, cfg, {k: tmp_path / "reused" / k for k in kinds}, every=3, scatter_points=100,
                              progress=False)
    start = Probes.on_run_start

    def own_pass(self, trainer):
        start(self, trainer)
        assert self.reuse  # no dropout, float32: g_t is the training pass's gradient
        self.reuse = False
    monkeypatch.setattr(Probes, "on_run_start", own_pass)
    separate = analyze_together(kinds, cfg, {k: tmp_path / "own" / k for k in kinds}, every=3, scatter_points=100,
                                progress=False)
    for kind in kinds:
        assert _records(reused[kind]) == _records(separate[kind])


def _json(path):
    return json.loads(path.read_text())


@pytest.mark.slow
def test_an_analysis_extended_elsewhere_records_what_one_run_records(blobs8, tmp_path, monkeypatch):
    cfg, kinds = config(blobs8, c=0.5, epochs=1), ("measures", "bias", "noise")
    reference = analyze_together(kinds, cfg, {k: tmp_path / "ref" / k for k in kinds}, every=4,
                                 scatter_points=100, progress=False)
    drawn = {f.name for f in (tmp_path / "ref" / "measures").glob("*.png")}
    assert drawn == {f for f in reference["measures"]["figures"] if f.endswith(".png")}
    tasks_drawn = {f.split("-")[1].removesuffix(".png") for f in drawn}
    assert tasks_drawn == {"task1", "task4"}  # tasks 2-3, drawn after each task, are gone
    dirs, checkpoint = {k: tmp_path / "parts" / k for k in kinds}, tmp_path / "run.pt"
    original = MeasuresProbe.task_ended

    def crash_in(crash_task):
        def task_ended(self, trainer, task):
            if task == crash_task:
                raise KeyboardInterrupt
            original(self, trainer, task)
        monkeypatch.setattr(MeasuresProbe, "task_ended", task_ended)
    crash_in(1)
    with pytest.raises(KeyboardInterrupt):
        analyze_together(kinds, cfg, dirs, every=4, scatter_points=100, progress=False, checkpoint=checkpoint)
    assert _json(dirs["bias"] / "bias.json")["tasks_done"] == 1
    crash_in(2)
    with pytest.raises(KeyboardInterrupt):  # resumed at task 2, stopped in task 3; the checkpoint wins over
        analyze_together(kinds, cfg, dirs, every=4, scatter_points=100, progress=False,  # the JSON to extend
                         checkpoint=checkpoint, resume=True, extend=True)
    monkeypatch.setattr(MeasuresProbe, "task_ended", original)
    checkpoint.unlink()  # a new machine: only the JSON written after each task is left
    partial = _json(dirs["bias"] / "bias.json")
    assert partial["complete"] is False and partial["tasks_done"] == 2 and len(partial["tasks"]) == 2
    assert [p["first_task"] for p in partial["parts"]] == [0] and "replayed_tasks" not in partial
    assert partial["wall_seconds"] == partial["parts"][0]["wall_seconds"]  # counted once
    assert partial["tasks"] == reference["bias"]["tasks"][:2]
    assert partial["accuracy_matrix"] == reference["bias"]["accuracy_matrix"][:2]
    assert "unfinished: 2 of 4 tasks recorded" in (dirs["bias"] / "summary.md").read_text()
    assert "| 2 |" in (dirs["measures"] / "summary.md").read_text()

    started, task_started = [], BiasProbe.task_started
    monkeypatch.setattr(BiasProbe, "task_started", lambda self, *a: (started.append(a[1]), task_started(self, *a)))
    elsewhere = config(blobs8, c=0.5, epochs=1, data_dir=str(tmp_path))  # another machine's data directory
    crash_in(3)
    with pytest.raises(KeyboardInterrupt):  # extended with a checkpoint, stopped in task 4, resumed
        analyze_together(kinds, elsewhere, dirs, every=4, scatter_points=100, progress=False,
                         checkpoint=checkpoint, extend=True)
    monkeypatch.setattr(MeasuresProbe, "task_ended", original)
    extended = analyze_together(kinds, elsewhere, dirs, every=4, scatter_points=100, progress=False,
                                checkpoint=checkpoint, resume=True, extend=True)
    assert started == [2, 3, 3]  # tasks 1-2 were trained again without probes, task 4 again after the stop
    for kind in kinds:
        ours = _json(dirs[kind] / f"{kind}.json")
        assert ours["complete"] and ours["replayed_tasks"] == 2 and ours["replay_max_accuracy_difference"] == 0.0
        assert [p["first_task"] for p in ours["parts"]] == [0, 2]  # (each resumed run continued its part)
        theirs = _json(tmp_path / "ref" / kind / f"{kind}.json")
        assert ours["config"] == elsewhere.to_dict()  # the last part's, data directory included
        assert _records(ours) | {"figures": None, "config": None} == _records(theirs) | {
            "replayed_tasks": 2, "replay_max_accuracy_difference": 0.0, "figures": None, "config": None}
        if kind == "measures":  # the first part drew task 1 (and 2), the second tasks 3 and 4
            assert {f for f in ours["figures"] if f.endswith("si-vs-sos.png")} == {
                f"scatter-task{t}-si-vs-sos.png" for t in (1, 2, 3, 4)}
        assert all((dirs[kind] / f).exists() for f in ours["figures"])
        assert _records(json.loads(json.dumps(extended[kind]))) == _records(ours)  # (JSON's keys are strings)
    assert analyze_together(kinds, cfg, dirs, every=4, scatter_points=100, progress=False, extend=True) == \
        {kind: _json(dirs[kind] / f"{kind}.json") for kind in kinds}  # complete: nothing is trained again

    with pytest.raises(ValueError, match="another configuration: lr 0.01 there, 0.02 here"):
        analyze_together(kinds, config(blobs8, c=0.5, epochs=1, lr=0.02), dirs, every=4,
                         scatter_points=100, progress=False, extend=True)
    with pytest.raises(ValueError, match="other options: every 4 there, 5 here"):
        analyze_together(kinds, cfg, dirs, every=5, scatter_points=100, progress=False, extend=True)
    with pytest.raises(ValueError, match="bias, noise have earlier records, measures none"):
        analyze_together(kinds, cfg, {**dirs, "measures": tmp_path / "empty"}, every=4, scatter_points=100,
                         progress=False, extend=True)
