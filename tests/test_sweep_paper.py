"""Published figures in sweep files (`paper`) and the report's comparison of each row with its target,
checked against targets worked out by hand."""
import csv
import math

import pytest

from clreg.sweeps.plan import plan
from clreg.sweeps.report import against_paper, entry_row, markdown, write_csv
from clreg.sweeps.spec import SpecError, parse_spec, stored_spec

BASE = {"benchmark": "permuted-digits", "settings": {"tasks": 2, "epochs": 1, "hidden": [8]}, "seeds": [0, 1, 2]}


def finished(spec, scores):
    """Every planned run done at once: the final runs of seed s score scores[s] (one c, so no search to wait on)."""
    store = {}
    while True:
        wanted, states = plan(spec, store.get)
        if not wanted:
            return states
        for config in wanted:
            score = scores[config.seed]
            store[config.key()] = {"status": "done", "config": config,
                                   "result": {"average_accuracy": score, "bwt": 0.0, "mean_forgetting": 0.0}}


@pytest.mark.parametrize("figure,message", [
    ({"mean": 97.2}, "methods.si.paper must be the published figure in %: {mean: N, se: N} or {about: N}"),
    ({"mean": 97.2, "se": -0.1}, "methods.si.paper.se must be in [0, 100], got -0.1"),
    ({"below": 101}, "methods.si.paper.below must be in [-100, 100], got 101"),
    ({"about": "57"}, "methods.si.paper.about must be a finite number, got '57'"),
    ({"about": 57, "below": 60}, "methods.si.paper must be the published figure in %"),
    (97.2, "methods.si.paper must be the published figure in %"),
])
def test_a_bad_published_figure_is_refused_by_its_key(figure, message):
    with pytest.raises(SpecError) as err:
        parse_spec({**BASE, "methods": {"si": {"c": 1, "paper": figure}}})
    assert message in str(err.value)


@pytest.mark.parametrize("paper,message", [({"margin": -0.1}, "paper.margin must be in [0, 100]"),
                                           ({"source": ""}, "paper.source must be a non-empty text"),
                                           ({"sources": "x"}, "paper: unknown key(s) 'sources'; allowed: source, margin")])
def test_a_bad_paper_block_is_refused_by_its_key(paper, message):
    with pytest.raises(SpecError) as err:
        parse_spec({**BASE, "paper": paper, "methods": {"si": {"c": 1}}})
    assert message in str(err.value)


def test_a_published_figure_is_not_part_of_any_run_and_survives_the_store():
    """The same sweep with and without figures plans the same runs (a store's runs stay theirs); the stored
    specification (a store's, a runs.json's) keeps the figures and the margin."""
    plain = parse_spec({**BASE, "methods": {"si": {"c": [1, 2]}}})
    figured = parse_spec({**BASE, "paper": {"source": "Table 1", "margin": 0.5},
                          "methods": {"si": {"c": [1, 2], "paper": {"mean": 97.2, "se": 0.1}}}})
    assert [c.key() for c in plan(plain, lambda key: None)[0]] == [c.key() for c in plan(figured, lambda key: None)[0]]
    again = stored_spec(figured.to_dict())
    assert again.entries[0].paper == {"mean": 97.2, "se": 0.1} and again.paper == {"source": "Table 1", "margin": 0.5}
    assert stored_spec(plain.to_dict()).entries[0].paper is None
    older = plain.to_dict()  # a specification stored before figures existed
    del older["paper"]
    for entry in older["entries"]:
        del entry["paper"]
    assert stored_spec(older).paper == {"source": "the paper", "margin": 0.3}


@pytest.mark.parametrize("figure,ours,verdict,target", [
    ({"mean": 97.2, "se": 0.1}, 0.968, "yes", (96.8, 97.6)),     # on the lower bound: 97.2 - 0.1 - 0.3
    ({"mean": 97.2, "se": 0.1}, 0.9679, "no", (96.8, 97.6)),     # 0.01 under it
    ({"mean": 97.2, "se": 0.1}, 0.976, "yes", (96.8, 97.6)),     # on the upper bound
    ({"mean": 97.2, "se": 0.1}, 0.9761, "no", (96.8, 97.6)),
    ({"mean": 97.1, "se": 0.2}, 0.9673, "yes", (96.6, 97.6)),    # EWC's seed 0: 0.37 under the paper
    ({"below": 95}, 0.9285, "yes", (None, 95)),
    ({"below": 95}, 0.95, "no", (None, 95)),                     # a bound is strict
    ({"above": 50}, 0.5001, "yes", (50, None)),
    ({"about": 57}, 0.536, None, (None, None)),                  # no s.e.: no target
])
def test_each_row_is_judged_against_the_published_target(figure, ours, verdict, target):
    out = against_paper(figure, 0.3, ours)
    assert out["in_target"] == verdict and (out["target_low"], out["target_high"]) == target
    published = figure.get("mean", figure.get("about"))
    assert (out["paper_difference"] is None) == (published is None)
    if published is not None:
        assert out["paper_difference"] == pytest.approx(100 * ours - published)
    assert against_paper(figure, 0.3, None)["in_target"] is None  # nothing finished: no verdict


def test_the_report_tables_each_row_beside_its_published_figure(tmp_path):
    """Three seeds at 97.0, 97.3, 97.6, each listed (mean 97.3, s.e. 0.173): against 97.2 ± 0.1 the difference is +0.10 and
    z = 0.1 / √(0.173² + 0.1²) = 0.50; against 96.5 ± 0.1 it misses (target 96.1–96.9). A row without a
    figure stays out of the comparison, and the CSV carries the verdicts."""
    spec = parse_spec({**BASE, "paper": {"source": "Table 1"}, "methods": {
        "si": {"c": 1, "paper": {"mean": 97.2, "se": 0.1}}, "sos": {"c": 1, "paper": {"mean": 96.5, "se": 0.1}},
        "mas": {"c": 1}}})
    states = finished(spec, {0: 0.970, 1: 0.973, 2: 0.976})
    rows = [entry_row(spec, state) for state in states.values()]
    text = markdown(rows)
    assert "against Table 1: the target is the published mean ± (s.e. + 0.3)" in text
    stderr = 100 * math.sqrt(sum((x - 0.973) ** 2 for x in (0.970, 0.973, 0.976)) / 2 / 3)
    assert f"+{0.1 / math.hypot(stderr, 0.1):.1f}" == "+0.5"
    seeds = "97.00 (0), 97.30 (1), 97.60 (2)"
    assert f"| si | {seeds} | 97.30 ± 0.17 (3) | 97.2 ± 0.1 | +0.10 | +0.5 | 96.8–97.6 | yes |" in text
    assert f"| sos | {seeds} | 97.30 ± 0.17 (3) | 96.5 ± 0.1 | +0.80 | +4.0 | 96.1–96.9 | no |" in text
    assert "| mas | 97.30" not in text.split("against Table 1")[1].split("Chosen")[0]
    write_csv(rows, tmp_path / "table.csv")
    with open(tmp_path / "table.csv") as f:
        verdicts = {r["label"]: (r["in_target"], r["target_low"], r["target_high"]) for r in csv.DictReader(f)}
    assert verdicts == {"si": ("yes", "96.8", "97.6"), "sos": ("no", "96.1", "96.9"), "mas": ("", "", "")}


def test_a_row_with_seeds_to_run_says_how_many_its_verdict_rests_on():
    spec = parse_spec({**BASE, "methods": {"si": {"c": 1, "paper": {"mean": 97.2, "se": 0.1}}}})
    state = finished(spec, {0: 0.975, 1: 0.975, 2: 0.975})["si"]
    state.final = state.final[:1]
    assert "| si | 97.50 (0) | 97.50 (1) of 3 | 97.2 ± 0.1 | +0.30 |  | 96.8–97.6 | yes (1 of 3 seeds) |" in markdown(
        [entry_row(spec, state)])


def test_a_mean_on_the_bound_is_in_the_target_whatever_the_float_sum():
    """96.89, 96.90, 96.91 average to 96.9 exactly, which numpy's mean gives as 96.89999999999999: on the
    lower bound of 97.3 ± (0.1 + 0.3), so in the target."""
    spec = parse_spec({**BASE, "methods": {"sos": {"c": 1, "paper": {"mean": 97.3, "se": 0.1}}}})
    row = entry_row(spec, finished(spec, {0: 0.9689, 1: 0.969, 2: 0.9691})["sos"])
    assert 100 * row["mean"] < 96.9 and row["target_low"] == 96.9 and row["in_target"] == "yes"


def test_a_z_that_rounds_to_zero_prints_without_a_sign():
    """Seeds 97.34 and 97.25 (mean 97.295, s.e. 0.045) against 97.3 ± 0.1: the difference is -0.005 and
    z = -0.005 / √(0.045² + 0.1²) = -0.046: both round to zero, and print 0.00 and 0.0 (the report once
    printed "-0.00" and "-0.0")."""
    spec = parse_spec({**BASE, "methods": {"sos": {"c": 1, "paper": {"mean": 97.3, "se": 0.1}}}})
    state = finished(spec, {0: 0.9734, 1: 0.9725, 2: 0.9725})["sos"]
    state.final = state.final[:2]
    row = entry_row(spec, state)
    assert -0.006 < row["paper_difference"] < 0 and -0.05 < row["paper_difference"] / math.hypot(
        100 * row["stderr"], 0.1) < 0
    assert "| 97.3 ± 0.1 | 0.00 | 0.0 | 96.9–97.7 | yes (2 of 3 seeds) |" in markdown([row])
