"""Figures: file names that stay distinct and safe for any label, a readable correlation heatmap whose colours
follow the data, and search plots whose c ticks do not overlap, whose series differ in colour and marker and
which mark the chosen c. Each figure is drawn once with small synthetic data (Agg backend)."""
import re
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("matplotlib")  # the plots extra
from matplotlib.colors import to_rgb  # noqa: E402

from clreg.analysis import plots  # noqa: E402
from clreg.sweeps import report  # noqa: E402
from clreg.sweeps.plan import EntryState  # noqa: E402
from clreg.sweeps.spec import Entry, Line, SweepSpec  # noqa: E402

HOSTILE = ["../x", "a/b", "SI v1.0", "SI v1.5", "√Fisher", "sqrt-Fisher", "éwc λ=0.5", "λ", "", " ", "...", "/",
           "SI", "si", "x" * 300, "x" * 301, "con", "a\\b", "a:b*?", "si", "ewc"]


def relative_luminance(rgb) -> float:
    """WCAG 2 relative luminance of an sRGB colour (components 0..1)."""
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[:3]]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a, b) -> float:
    light, dark = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def x_label_boxes(ax) -> list:
    """Window extents of every drawn x tick label (major and minor) inside the view, left to right."""
    ax.figure.canvas.draw()
    low, high = sorted(ax.get_xlim())
    labels = [label for label in ax.xaxis.get_majorticklabels() + ax.xaxis.get_minorticklabels()
              if label.get_visible() and label.get_text() and low <= label.get_position()[0] <= high]
    return sorted((label.get_window_extent() for label in labels), key=lambda box: box.x0)


def test_file_names_are_safe_distinct_and_stable_for_hostile_labels(tmp_path):
    keys = [("matrix", "sweep", label) for label in HOSTILE]
    names = plots.file_names(keys)
    assert len(names) == len(set(HOSTILE))  # "si" twice is one key
    assert len({name.casefold() for name in names.values()}) == len(names)  # case-insensitive file systems too
    for (_, _, label), name in names.items():
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", name) and not name.startswith((".", "-")), name
        assert len(name.encode()) + len(".png") <= 255 and ".." not in name.split("-")
        if label in ("ewc", "con"):
            assert name == f"matrix-sweep-{label}"  # readable labels that clash with none stay as they are
        else:  # changed ('SI v1.0'), or the same name as another, case ignored ('si', 'SI'; '√Fisher', 'sqrt-Fisher')
            assert re.search(r"-[0-9a-f]{8}$", name), (label, name)
    assert names["matrix", "sweep", "SI v1.0"] == "matrix-sweep-SI-v1.0-" + names["matrix", "sweep", "SI v1.0"][-8:]
    assert plots.file_names(reversed(keys)) == names  # the same names in any order, on every run
    assert plots.file_name("matrix", "sweep", "a/b") == names["matrix", "sweep", "a/b"]
    clash = plots.file_names([("search", "a-b", "c"), ("search", "a", "b-c")])  # equal once joined
    assert len(set(clash.values())) == 2
    for name in names.values():  # real files: none overwrites another, none lands outside tmp_path
        (tmp_path / f"{name}.png").write_bytes(b"")
    assert len(list(tmp_path.iterdir())) == len(names)


def test_save_adds_suffixes_instead_of_replacing_a_dotted_label(tmp_path):
    plt = plots.pyplot()
    paths = []
    for label in ("SI v1.0", "SI v1.5"):
        fig, _ = plt.subplots(figsize=(1, 1))
        paths += plots.save(fig, tmp_path / plots.file_name("matrix", label))
    assert len(set(paths)) == 4 and all(p.exists() for p in paths)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


def _state(label: str, curves: dict, chosen: float | None, done: bool = True) -> EntryState:
    result = {"accuracy_matrix": [[0.9, 0.1], [0.7, 0.95]], "average_accuracy": 0.825, "mean_forgetting": 0.2}
    final = [{"status": "done", "config": {"seed": 0}, "result": result}] if done else []
    lines = {Line(reinit): curve for reinit, curve in curves.items()}
    return EntryState(entry=Entry(label, "si", sorted({c for curve in curves.values() for c in curve}), list(curves)),
                      curves=lines, selected=None if chosen is None else (chosen, Line(next(iter(curves)))),
                      final=final, search_done=True, complete=done)


def _spec(name: str, labels) -> SweepSpec:
    return SweepSpec(name=name, benchmark="permuted-digits", settings={}, seeds=[0],
                     entries=[Entry(label, "si", [0.1], [False]) for label in labels])


def test_report_writes_one_figure_file_per_label(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    labels = ["SI v1.0", "SI v1.5", "si", "SI"]
    curve = {False: {0.1: 0.8, 0.2: 0.85}}
    states = {"grid": (_spec("grid", labels), {label: _state(label, curve, 0.2) for label in labels})}
    monkeypatch.setattr(report, "sweep_states", lambda store: states)
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kwargs: open(path, "wb").close())  # no drawing: fast
    store = SimpleNamespace(path=tmp_path / "x.sqlite", sweeps=lambda: {}, runs=lambda: [])
    figures = report.write_report(store, tmp_path / "out")["figures"]
    assert len(figures) == 2 * (1 + len(labels)) == len({f.casefold() for f in figures})  # case-insensitive too
    written = sorted(str(p) for p in (tmp_path / "out").iterdir() if p.suffix in (".png", ".svg"))
    assert written == sorted(figures)  # as many files as the report counts


@pytest.mark.parametrize("low", [0.62, -0.3])
def test_correlation_colours_follow_the_data(low):
    rng = np.random.default_rng(0)
    k = 5
    matrix = np.clip(rng.uniform(max(low, 0.7), 0.99, size=(k, k)), -1, 1)
    matrix = (matrix + matrix.T) / 2
    matrix[0, 1] = matrix[1, 0] = low
    np.fill_diagonal(matrix, 1.0)
    matrix[3, 4] = matrix[4, 3] = np.nan  # a constant measure's
    fig = plots.correlation_figure(matrix, [f"m{i}" for i in range(k)], "title")
    ax = fig.axes[0]
    image = ax.images[0]
    if low >= 0:  # sequential, from the observed minimum to 1
        assert (image.norm.vmin, image.norm.vmax) == (pytest.approx(low), 1.0) and image.cmap.name.startswith("viridis")
    else:  # diverging, centred at 0
        assert image.norm.vmin == -image.norm.vmax == pytest.approx(-1.0) and image.cmap.name.startswith("RdBu_r")
    fig.canvas.draw()
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in ax.texts}
    assert len(cells) == k * k - 2 and (3, 4) not in cells  # every defined cell carries its value
    width = ax.get_window_extent().width / k
    for (i, j), text in cells.items():
        assert text.get_text() == f"{matrix[i, j]:.2f}" and text.get_fontsize() >= 6
        assert text.get_window_extent().width < width  # fits its cell
        background = image.cmap(image.norm(matrix[i, j]))
        assert contrast(to_rgb(text.get_color()), background) >= 4.5  # readable on its cell
    plots.pyplot().close(fig)


def test_correlation_numbers_make_way_for_the_colour_bar_on_many_measures():
    k = 60
    matrix = np.full((k, k), 0.9)
    np.fill_diagonal(matrix, 1.0)
    fig = plots.correlation_figure(matrix, [f"measure-{i}" for i in range(k)], "title")
    assert len(fig.axes[0].texts) == 0 and len(fig.axes) == 2  # no unreadable numbers; the colour bar carries them
    width, height = fig.get_size_inches()
    assert width < 20 and height < 20
    plots.pyplot().close(fig)


def test_correlation_heatmap_writes_both_files(tmp_path):
    matrix = np.array([[1.0, 0.8], [0.8, 1.0]])
    paths = plots.correlation_heatmap(matrix, ["si", "sos"], "title", tmp_path / "correlation-task1")
    assert [p.name for p in paths] == ["correlation-task1.png", "correlation-task1.svg"]
    assert all(p.stat().st_size > 1000 for p in paths)


@pytest.mark.parametrize("grid", [[0.02, 0.05, 0.1, 0.2, 0.5], [0.3, 0.4, 0.5], [0.41, 0.43, 0.47],
                                  [1e-4, 1e-2, 1, 100, 1e4]])
def test_search_figure_ticks_do_not_overlap(grid):
    states = {"si": _state("si", {False: {c: 0.8 + 0.01 * i for i, c in enumerate(grid)}}, grid[-1])}
    fig = report.search_figure(_spec("grid", ["si"]), states)
    ax = fig.axes[0]
    boxes = x_label_boxes(ax)
    assert len(boxes) >= 2 and all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:]))
    plots.pyplot().close(fig)


def test_search_figure_marks_the_chosen_c_and_tells_series_apart(tmp_path):
    labels = ["si", "ewc", "mas", "sos"]
    grid = [0.1, 0.2, 0.5, 1.0]
    chosen = {"si": 0.2, "ewc": 0.5, "mas": 1.0, "sos": 0.1}
    states = {label: _state(label, {False: {c: 0.8 + 0.01 * n for c in grid}, True: {c: 0.7 + 0.01 * n for c in grid}},
                            chosen[label]) for n, label in enumerate(labels)}
    fig = report.search_figure(_spec("grid", labels), states)
    ax = fig.axes[0]
    series = [line for line in ax.lines if list(line.get_xdata()) == grid]
    assert len(series) == 2 * len(labels)
    styles = {(line.get_color(), line.get_marker(), line.get_linestyle()) for line in series}
    assert len(styles) == len(series)  # every series looks different
    per_method = {}
    for line in series:
        per_method.setdefault(line.get_label().split(" (")[0], set()).add((line.get_color(), line.get_marker()))
    assert all(len(v) == 1 for v in per_method.values())
    colours = [next(iter(v))[0] for v in per_method.values()]
    markers = [next(iter(v))[1] for v in per_method.values()]
    assert len(set(colours)) == len(set(markers)) == len(labels)  # colour, and marker as a second cue
    for label, c in chosen.items():
        colour = to_rgb(next(iter(per_method[label]))[0])
        vertical = [line for line in ax.lines if list(line.get_xdata()) == [c, c] and to_rgb(line.get_color()) == colour]
        assert len(vertical) == 1, label
        assert any(text.get_text() == f"{label}: chosen c = {c:g}" for text in ax.texts)
    paths = plots.save(fig, tmp_path / "search-grid")
    assert all(p.stat().st_size > 1000 for p in paths)
