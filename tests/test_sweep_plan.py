"""Sweep files and the grid search's plan, against a store that is a plain dict (no training)."""
import math
import time

import pytest
import yaml

from clreg.train.config import RunConfig
from clreg.sweeps.store import Store
from clreg.sweeps.plan import WAIT, SweepDriver, edge_extension, lattice_neighbour, plan
from clreg.sweeps.spec import Line, SpecError, load_spec, parse_spec

BASE = {"benchmark": "permuted-digits", "settings": {"tasks": 2, "epochs": 1, "hidden": [8]}, "seeds": [0, 1, 2]}


@pytest.mark.parametrize("c,up,expected", [(1, True, 2), (2, True, 5), (5, True, 10), (0.2, True, 0.5), (50, True, 100),
                                           (1, False, 0.5), (0.05, False, 0.02), (10, False, 5), (3, True, 5),
                                           (3, False, 2), (0.001, False, 0.0005), (0, True, None)])
def test_lattice_neighbours(c, up, expected):
    assert lattice_neighbour(c, up) == expected


def test_edge_extension():
    assert edge_extension([1, 2, 5], 5) == 10 and edge_extension([1, 2, 5], 1) == 0.5
    assert edge_extension([1, 2, 5], 2) is None and edge_extension([5], 5) is None
    assert edge_extension([0, 1], 0) is None  # c = 0 cannot be extended below


def simulate(spec, accuracy):
    """Run the plan to the end with instant 'runs' whose search score is accuracy(c, reinit)."""
    store, waves = {}, 0
    while True:
        wanted, states = plan(spec, lambda key: store.get(key))
        if not wanted:
            return store, states, waves
        waves += 1
        for config in wanted:
            score = accuracy(config.c, config.reinit) + 0.001 * config.seed
            store[config.key()] = {"status": "done", "config": config,
                                   "result": {"average_accuracy": score, "bwt": -score, "mean_forgetting": 0.0}}


def peaked(best_c):
    return lambda c, reinit: 0.9 - 0.1 * abs(math.log10(c / best_c)) - (0.05 if reinit else 0.0)


def test_grid_is_extended_to_the_optimum_then_final_seeds_run():
    spec = parse_spec({**BASE, "methods": {"si": {"c": [1, 2, 5], "reinit": [True, False]}}})
    store, states, waves = simulate(spec, peaked(50))
    state = states["si"]
    assert state.complete and state.selected == (50.0, Line(False))
    assert sorted(state.curves[Line(False)]) == [1, 2, 5, 10, 20, 50, 100]  # extended until 50 is interior
    assert state.at_edge == {Line(True): False, Line(False): False}
    finals = [r["config"] for r in store.values() if r["config"].evaluate_on == "test"]
    assert sorted(c.seed for c in finals) == [0, 1, 2] and {c.c for c in finals} == {50.0}
    search = [r["config"] for r in store.values() if r["config"].evaluate_on == "validation"]
    assert {c.seed for c in search} == {0}  # the search uses the first seed only
    assert len(search) == 14 and waves == 6  # 7 values per line; one wave per extension, then the final runs


def test_extensions_are_capped_and_the_edge_reported():
    spec = parse_spec({**BASE, "search": {"max_extensions": 2}, "methods": {"mas": {"c": [1, 2, 5]}}})
    _, states, _ = simulate(spec, peaked(1000))
    assert sorted(states["mas"].curves[Line(False)]) == [1, 2, 5, 10, 20] and states["mas"].at_edge[Line(False)]
    assert states["mas"].selected == (20.0, Line(False))


def test_diverged_runs_lose_and_search_on_test_reuses_runs():
    spec = parse_spec({**BASE, "search": {"evaluate_on": "test", "seeds": 2}, "methods": {"sos": {"c": [1, 10]}}})
    store = {}
    wanted, _ = plan(spec, store.get)
    for config in wanted:
        status = "diverged" if config.c == 10 else "done"
        store[config.key()] = {"status": status, "config": config, "result": {"average_accuracy": 0.5}}
    wanted, states = plan(spec, store.get)
    assert states["sos"].curves[Line(False)][10.0] == -math.inf  # diverged: never chosen
    assert {c.c for c in wanted} == {0.5}  # so c = 1 is best, on the lower edge: extend downwards
    store.update({c.key(): {"status": "done", "config": c, "result": {"average_accuracy": 0.4}} for c in wanted})
    wanted, states = plan(spec, store.get)
    assert states["sos"].selected == (1.0, Line(False))
    assert [c.seed for c in wanted] == [2]  # seeds 0 and 1 of c = 1 on test were the search runs


def test_runs_in_flight_are_not_wanted_twice():
    spec = parse_spec({**BASE, "methods": {"si": {"c": [1, 2]}}})
    wanted, states = plan(spec, lambda key: WAIT)
    assert wanted == [] and not states["si"].search_done


def test_yaml_file_round_trip(tmp_path):
    path = tmp_path / "grid.yaml"
    settings = {**BASE["settings"], "hidden": "8"}  # widths as on the command line
    methods = {"SOS b=2048": {"method": "sos", "c": 5, "reinit": True, "settings": {"batch_size": 64, "sos_alpha": 1}}}
    path.write_text(yaml.safe_dump({**BASE, "settings": settings, "methods": methods}))
    spec = load_spec(path)
    assert spec.name == "grid" and spec.entries[0].c == [5.0] and spec.entries[0].reinit == [True]
    config = spec.config(spec.entries[0], 5.0, True, 0, "test")
    assert config.batch_size == 64 and config.sos_alpha == 1 and config.hidden == [8] and config.method == "sos"


@pytest.mark.parametrize("change,message", [
    ({"methods": {"si": {"c": [1], "lr": 3}}}, "methods.si: unknown key(s) 'lr'; allowed: method, c, reinit, settings"),
    ({"methods": {"si": {"c": [-1]}}}, "methods.si.c must be a number >= 0 or a non-empty list of them, got [-1]"),
    ({"methods": {"si": {"c": [1, 1]}}}, "methods.si.c lists a value twice"),
    ({"methods": {"si": {}}}, "methods.si: c is required"),
    ({"methods": {"nope": {"c": 1}}}, "methods.nope: unknown method 'nope'"),
    ({"methods": {"si": {"c": 1, "reinit": "yes"}}}, "methods.si.reinit must be true, false or [true, false]"),
    ({"methods": {"si": {"c": 1, "settings": {"seed": 3}}}}, "methods.si.settings: unknown key(s) 'seed'"),
    ({"methods": {"si": {"c": 1, "settings": {"epochs": 0}}}}, "methods.si.settings.epochs must be >= 1, got 0"),
    ({"settings": {"method": "si"}, "methods": {"si": {"c": 1}}}, "settings: unknown key(s) 'method'"),
    ({"seeds": 0, "methods": {"si": {"c": 1}}}, "seeds must be a count >= 1 or a list of distinct integers"),
    ({"search": {"seeds": 4}, "methods": {"si": {"c": 1}}}, "search.seeds (how many of the seeds the grid search uses) must be 1..3"),
    ({"search": {"metric": "loss"}, "methods": {"si": {"c": 1}}}, "search.metric must be one of average_accuracy, bwt"),
    ({"search": {"evaluate_on": "train"}, "methods": {"si": {"c": 1}}}, "search.evaluate_on must be one of test, validation"),
    ({"methods": {}}, "methods must be a non-empty mapping"),
    ({"settings": {"hidden": "400,x"}, "methods": {"si": {"c": 1}}},
     "settings.hidden must be positive integers separated by commas (e.g. 2000,2000), got '400,x'"),
    ({"benchmark": "nope", "methods": {"si": {"c": 1}}}, "methods.si: unknown benchmark 'nope'"),
    ({"grid": 1, "methods": {"si": {"c": 1}}}, "the sweep file: unknown key(s) 'grid'"),
])
def test_bad_sweep_files_name_the_key(change, message):
    with pytest.raises(SpecError) as err:
        parse_spec({**BASE, **change})
    assert message in str(err.value)


def test_yaml_is_never_executed(tmp_path):
    path = tmp_path / "evil.yaml"
    marker = tmp_path / "ran"
    path.write_text(f"benchmark: !!python/object/apply:os.system ['touch {marker}']\nmethods: {{si: {{c: 1}}}}\n")
    with pytest.raises(SpecError, match="is not valid YAML"):
        load_spec(path)
    assert not marker.exists()
    (tmp_path / "bad.yaml").write_text("methods: [unclosed\n")
    with pytest.raises(SpecError, match="is not valid YAML"):
        load_spec(tmp_path / "bad.yaml")
    with pytest.raises(SpecError, match="cannot read sweep file"):
        load_spec(tmp_path / "missing.yaml")


class FakeExecutor:
    """Instant 'runs' whose score peaks at c = 5; optionally slow, or interrupted at the n-th wait."""

    def __init__(self, seconds=0.0, interrupt_at=None):
        self.slots, self.threads, self.queue, self.waits = 1, 1, [], 0
        self.seconds, self.interrupt_at, self.shut = seconds, interrupt_at, False

    def submit(self, key, config):
        self.queue.append((key, config))

    def wait(self, timeout):
        self.waits += 1
        if self.waits == self.interrupt_at:
            raise KeyboardInterrupt
        time.sleep(self.seconds)
        key, config = self.queue.pop(0)
        score = peaked(5)(config["c"], config["reinit"])
        result = {"accuracy_matrix": [[score]], "average_accuracy": score, "mean_forgetting": 0.0, "bwt": 0.0}
        return [(key, {"status": "done", "result": result, "seconds": 0.0})]

    def shutdown(self, cancel=False):
        self.shut = cancel


def test_driver_heartbeats_while_a_run_is_in_flight(tmp_path):
    spec = parse_spec({**BASE, "seeds": 1, "search": {"evaluate_on": "test"}, "methods": {"si": {"c": 5}}})
    store = Store(tmp_path / "s.sqlite")
    states = SweepDriver(spec, store, FakeExecutor(seconds=0.6), log=lambda line: None, heartbeat_every=0.1).run()
    (row,) = store.runs()
    assert states["si"].complete and row["status"] == "done" and row["heartbeat"] - row["claimed"] > 0.3


def test_interrupted_driver_hands_its_runs_back(tmp_path):
    spec = parse_spec({**BASE, "methods": {"si": {"c": [1, 2, 5, 10]}}})
    store = Store(tmp_path / "s.sqlite")
    executor = FakeExecutor(interrupt_at=3)
    lines = []
    with pytest.raises(KeyboardInterrupt):
        SweepDriver(spec, store, executor, log=lines.append).run()
    # interrupted, not failed: the next sweep runs it again (c = 10 was queued)
    assert store.counts() == {"done": 2, "interrupted": 1, "pending": 1} and executor.shut
    assert store.runs(status="interrupted")[0]["error"] == "interrupted: KeyboardInterrupt" and len(lines) == 2
    states = SweepDriver(spec, store, FakeExecutor(), log=lines.append).run()  # the next invocation finishes
    assert states["si"].selected == (5.0, Line(False)) and store.counts() == {"done": 7}
    assert sorted(r["attempts"] for r in store.runs()) == [1] * 6 + [2]  # the interrupted run, once more


def test_run_keys_identify_the_numbers_not_the_spelling():
    base = RunConfig(benchmark="permuted-mnist", method="si", c=1, reinit=False, tasks=2, hidden=[400, 400])
    same = [RunConfig(benchmark="permuted-mnist", method="si", c=1.0, reinit=False, tasks=2, hidden=[400, 400], lr=1e-3),
            RunConfig(benchmark="permuted-mnist", method="si", c=1, reinit=False, tasks=2, hidden=[400, 400], xi=0.1,
                      importance_samples=1000, data_dir="/elsewhere", network="mlp")]
    assert all(config.key() == base.key() for config in same)
    different = [RunConfig(**{**base.__dict__, name: value}) for name, value in
                 (("seed", 1), ("c", 1.5), ("reinit", True), ("evaluate_on", "validation"), ("batch_size", 128),
                  ("hidden", [400]), ("epochs", 19))]
    assert len({config.key() for config in different} | {base.key()}) == len(different) + 1
    assert RunConfig.from_dict(base.canonical()).key() == base.key()
    with pytest.raises(ValueError, match="unknown run setting.s. 'widths'"):
        RunConfig.from_dict({"widths": [3]})


def test_edge_is_flagged_without_extension():
    spec = parse_spec({**BASE, "search": {"extend": False}, "methods": {"mas": {"c": [1, 2, 5]}}})
    _, states, _ = simulate(spec, peaked(1000))
    assert sorted(states["mas"].curves[Line(False)]) == [1, 2, 5] and states["mas"].at_edge[Line(False)]
    _, states, _ = simulate(spec, peaked(2))
    assert not states["mas"].at_edge[Line(False)]


def test_failed_runs_choose_nothing():
    """A grid with a failed run (an error, not a divergence) chooses no c, whatever the other runs scored."""
    spec = parse_spec({**BASE, "methods": {"si": {"c": [1, 2]}, "ewc": {"method": "fisher", "c": [1, 2]}}})
    store = {}
    wanted, _ = plan(spec, store.get)
    for config in wanted:
        failed = config.method == "si" and config.c == 2
        store[config.key()] = {"status": "failed" if failed else "done", "config": config, "error": "Traceback\nboom",
                               "result": None if failed else {"average_accuracy": 0.5}}
    wanted, states = plan(spec, store.get)
    assert states["si"].selected is None and states["si"].settled and len(states["si"].failed) == 1
    assert not states["ewc"].failed and wanted and all(c.method == "fisher" for c in wanted)  # ewc goes on


def test_every_problem_of_a_sweep_file_at_once():
    with pytest.raises(SpecError) as err:
        parse_spec({**BASE, "seeds": 0, "search": {"metric": "loss"},
                    "methods": {"si": {"c": [-1]}, "nope": {"c": 1}, "ewc": {"method": "fisher", "c": 1}}})
    text = str(err.value)
    assert text.startswith("4 problems in the sweep file:")
    for message in ("seeds must be a count >= 1", "search.metric must be one of", "methods.si.c must be a number >= 0",
                    "methods.nope: unknown method 'nope'"):
        assert message in text


def test_grid_settings_are_searched_with_c():
    """lr is searched jointly with c: every (lr, re-init) line walks its own c grid; the best point wins
    and the final runs use its lr."""
    spec = parse_spec({**BASE, "methods": {"si-sgd": {"method": "si", "c": [1, 10, 100],
                                                      "settings": {"optimizer": "sgd", "momentum": 0.9},
                                                      "grid": {"lr": [0.01, 0.1]}}}})
    def accuracy(config):
        return 0.9 - 0.1 * abs(math.log10(config.c / 10)) - (0.2 if config.lr == 0.1 else 0.0)

    store = {}
    while True:
        wanted, states = plan(spec, store.get)
        if not wanted:
            break
        for config in wanted:
            store[config.key()] = {"status": "done", "config": config,
                                   "result": {"average_accuracy": accuracy(config), "bwt": 0.0, "mean_forgetting": 0.0}}
    state = states["si-sgd"]
    assert set(state.curves) == {Line(False, (("lr", 0.01),)), Line(False, (("lr", 0.1),))}
    assert state.selected == (10.0, Line(False, (("lr", 0.01),)))
    finals = [r["config"] for r in store.values() if r["config"].evaluate_on == "test"]
    assert {(c.lr, c.c, c.optimizer, c.momentum) for c in finals} == {(0.01, 10.0, "sgd", 0.9)} and len(finals) == 3
    with pytest.raises(SpecError, match="methods.x.grid.lr is also fixed in the entry's settings"):
        parse_spec({**BASE, "methods": {"x": {"method": "si", "c": 1, "settings": {"lr": 0.1}, "grid": {"lr": [0.1]}}}})
    with pytest.raises(SpecError, match="methods.x.grid: unknown key.s. 'seed'"):
        parse_spec({**BASE, "methods": {"x": {"method": "si", "c": 1, "grid": {"seed": [1, 2]}}}})


def test_an_entry_with_nothing_to_choose_plans_its_final_runs_with_its_search():
    """One c and one re-init: the search cannot choose anything else, so the final seeds are wanted at once
    (one wave, which lets a vectorised sweep put every seed of the row in one job); a grid still waits."""
    spec = parse_spec({**BASE, "methods": {"ewc": {"method": "fisher", "c": [10], "reinit": [False]},
                                           "si": {"c": [1, 2], "reinit": [False]}}})
    wanted, _ = plan(spec, lambda key: None)
    fisher = sorted((c.evaluate_on, c.seed) for c in wanted if c.method == "fisher")
    assert fisher == [("test", 0), ("test", 1), ("test", 2), ("validation", 0)]
    assert sorted((c.evaluate_on, c.c) for c in wanted if c.method == "si") == [("validation", 1.0), ("validation", 2.0)]
    alone = parse_spec({**BASE, "methods": {"ewc": {"method": "fisher", "c": [10], "reinit": [False]}}})
    store, states, waves = simulate(alone, peaked(1))
    assert states["ewc"].complete and states["ewc"].selected == (10.0, Line(False)) and waves == 1
