"""Command line: `clreg run`, `clreg sweep`, `clreg report`, `clreg analyze`, `clreg methods`, `clreg demo`."""
from __future__ import annotations

import sys
from pathlib import Path

import click
import torch

from clreg import importance
from clreg.train.config import OPTIONS, RunConfig, read_run_file
from clreg.data import DataFileError
from clreg.core.device import check_combination, resolve_device
from clreg.analysis.measures import PAIRS, parse_pairs
from clreg.analysis.run import KINDS
from clreg.core.options import Option
from clreg.core.records import check_writable, provenance, write_json
from clreg.train.progress import LongRunWarning
from clreg.train.steplog import JsonLines, StepLog, TensorBoard, step_log_path


def _fail(message: str) -> None:
    raise click.UsageError(message)


def format_matrix(accuracy: list[list[float]]) -> str:
    """The accuracy matrix in percent, one row per task trained."""
    k = len(accuracy)
    lines = ["after \\ on " + " ".join(f"{j + 1:>6d}" for j in range(k))]
    for i, row in enumerate(accuracy):
        lines.append(f"task {i + 1:<6d}" + " ".join(f"{100 * v:6.2f}" for v in row))
    return "\n".join(lines)


@click.group()
@click.version_option(package_name="clreg")
def cli() -> None:
    """clreg: regularisation-based continual learning (EWC, SI, MAS, SOS, ...)."""


class SettingType(click.ParamType):
    """A declared setting's parser as a click type: a bad value is a usage error naming the flag."""

    def __init__(self, option: Option):
        self.option, self.name = option, option.name

    def get_metavar(self, param, ctx=None) -> str:  # noqa: D102
        if self.option.choices:
            return "[" + "|".join(map(str, self.option.choices)) + "]"
        return {int: "INTEGER", float: "NUMBER", str: "TEXT"}.get(self.option.type, "VALUE")

    def convert(self, value, param, ctx):  # noqa: D102
        try:
            return self.option.parse(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)


def click_option(option: Option):
    """The command-line flag of a declared setting. Its default is None ("not given"), so that a run file
    (--config) and the setting's own default can fill it; the help shows the setting's default."""
    help_text = f"{option.help}  [default: {option.shown_default}]"
    if option.type is bool:
        flag = option.cli_flag
        return click.option(f"{flag}/--no-{flag[2:]}", option.name, default=None, help=help_text)
    return click.option(option.cli_flag, option.name, type=SettingType(option), default=None, help=help_text)


RUN_FILE = click.option("--config", "run_file", default=None, metavar="FILE",
                        help="take settings from FILE: YAML (setting: value) or a result JSON of `clreg run --out`, "
                             "which replays that run; flags given override it")
THREADS = click.option("--threads", type=click.IntRange(min=1), default=None,
                       help="torch threads for this run [default: torch's, one per core]")


def config_options(command):
    """The flags that make a RunConfig, one per declared setting (clreg.train.config.OPTIONS), with --config and
    --threads; shared by `run` and the `analyze` commands."""
    for option in reversed(OPTIONS):
        command = click_option(option)(command)
    return THREADS(RUN_FILE(command))


def checkpoint_options(what: str):
    """--checkpoint FILE (saving `what` after every task) and --resume; shared by `run` and `analyze`."""
    def decorate(command):
        command = click.option("--resume", is_flag=True,
                               help="with --checkpoint: continue from the checkpoint if it exists")(command)
        return click.option("--checkpoint", default=None, help=f"save {what} to this file after every task")(command)
    return decorate


def check_resume(checkpoint: str | None, resume: bool) -> None:
    """--resume without --checkpoint is a usage error."""
    if resume and checkpoint is None:
        _fail("--resume needs --checkpoint FILE (the file written after every task)")


def make_config(run_file: str | None = None, threads: int | None = None, **options) -> RunConfig:
    """A validated RunConfig from a run file and the flags given (flags win; the rest at their defaults);
    bad values and combinations become one-line usage errors. Sets torch's thread count."""
    try:
        settings = read_run_file(run_file) if run_file else {}
        settings.update({name: value for name, value in options.items() if value is not None})
        config = RunConfig.from_dict(settings)
        check_combination(resolve_device(config.device), config.precision)  # CUDA asked for but absent, tf32 on CPU
    except ValueError as err:
        _fail(str(err))
    if threads:
        torch.set_num_threads(threads)
    return config


def run_header(config: RunConfig, bench) -> str:
    """What will run, with the settings a user most often leaves to the benchmark's defaults."""
    from clreg.train.loop import Trainer

    c, reinit, known = config.method_defaults()
    source = ""
    if (config.c, config.reinit) == (c, reinit):
        source = f" (known good for {config.benchmark})" if known else " (no value known for this benchmark: a " \
            "generic default; choose c with `clreg sweep`)"
    steps = [Trainer.steps_for(config, bench, task) for task in range(bench.num_tasks)]
    return (f"clreg run: {config.method} c={config.c:g} re-init {'on' if config.reinit else 'off'}{source}\n"
            f"  {config.benchmark}: {bench.num_tasks} tasks x {config.epochs} epochs = {sum(steps):,} steps of "
            f"b={config.batch_size}, lr {config.learning_rate:g}, {config.optimizer}; {config.network_name} "
            f"{','.join(map(str, config.widths))}; {resolve_device(config.device)} {config.precision}")


def load_data(config: RunConfig):
    """The run's benchmark. Invalid input (a bad file of the user's own, a task count or batch size the
    data cannot give) is a usage error, exit 2; missing or corrupt standard data exits 1."""
    from clreg.train.loop import check_fits, load_benchmark

    try:
        bench = load_benchmark(config)
        check_fits(bench, config)
    except DataFileError as err:
        if config.benchmark.startswith("arrays:"):
            _fail(str(err))
        raise click.ClickException(str(err)) from None
    except ValueError as err:
        _fail(str(err))
    return bench


@cli.command()
@config_options
@click.option("--out", "out", default=None,
              help="write the results as JSON to this file, and the step log (JSON lines) beside it as "
                   "OUT-stem.steps.jsonl")
@click.option("--log-every", type=click.IntRange(min=1), default=None,
              help="steps between two step-log records [default: a task's steps / 200]")
@click.option("--tensorboard", default=None, metavar="DIR",
              help="also write the step log as TensorBoard event files into DIR (pip install 'clreg[tensorboard]')")
@checkpoint_options("the run's state")
@click.option("--quiet", is_flag=True, help="no progress bars")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="train data-parallel in this many processes (one GPU each on CUDA; gloo on the CPU): each "
                   "takes its share of every batch and of the importance sample, with one process's result")
@click.option("--warn-after", type=click.FloatRange(min=0), default=600.0, show_default=True,
              help="say how long the run will take when the estimate (from its first steps) exceeds this many seconds")
def run(out: str | None, log_every: int | None, tensorboard: str | None, checkpoint: str | None, resume: bool,
        quiet: bool, nproc: int, warn_after: float, **options) -> None:
    """Train a network on a task sequence with one method and report the accuracy matrix."""
    config = make_config(**options)
    check_resume(checkpoint, resume)
    try:
        if out:
            check_writable(out)
        sinks = [*([JsonLines(step_log_path(out))] if out else []), *([TensorBoard(tensorboard)] if tensorboard else [])] \
            if nproc == 1 else []  # (under --nproc, process 0 opens them)
    except ValueError as err:
        _fail(str(err))
    from clreg.train.loop import run as run_config  # imported late: keeps `clreg methods` and errors fast

    bench = load_data(config)
    click.echo(run_header(config, bench), err=True)
    from clreg.train.checkpoint import CheckpointError
    from clreg.train.guard import Diverged

    if resume and Path(checkpoint).exists():
        click.echo(f"resuming from {checkpoint}", err=True)
    from clreg.train.nproc import ParallelRunError, launch

    try:
        if nproc > 1:
            result = launch(config, nproc, progress=not quiet, checkpoint_path=checkpoint, resume=resume,
                            log_path=str(step_log_path(out)) if out else None, tensorboard=tensorboard,
                            log_every=log_every)
        else:
            result = run_config(config, progress=not quiet, bench=bench, checkpoint_path=checkpoint, resume=resume,
                                log=StepLog(sinks, every=log_every),
                                callbacks=[LongRunWarning(lambda line: click.echo(line, err=True), warn_after)])
    except (Diverged, CheckpointError, ParallelRunError) as err:
        raise click.ClickException(str(err)) from None
    except ValueError as err:
        _fail(str(err))
    result.update(provenance(" ".join(["clreg", *sys.argv[1:]])), processes=nproc)
    click.echo(format_matrix(result["accuracy_matrix"]))
    click.echo(f"average accuracy {100 * result['average_accuracy']:.2f}%  "
               f"forgetting {100 * result['mean_forgetting']:.2f}%  BWT {100 * result['bwt']:.2f}%  "
               f"train {result['timing']['train_seconds']:.1f}s  importance {result['timing']['importance_seconds']:.1f}s")
    if "revisit" in result:
        before, after = result["revisit"]["accuracy_before"], result["revisit"]["accuracy_after"]
        click.echo(f"revisit: task 1's penalty dropped and task 1 learned again: task 1 {100 * before[0]:.2f}% -> "
                   f"{100 * after[0]:.2f}%, average {100 * sum(before) / len(before):.2f}% -> "
                   f"{100 * sum(after) / len(after):.2f}%")
    if "proxy_losses" in result:
        r = result["proxy_losses"]["correlation_proxy_vs_loss_increase"]
        click.echo("proxy loss vs measured loss increase: " + ("too few records" if r is None else f"Pearson r = {r:.3f}"))
    if out:
        write_json(out, result)
        click.echo(f"results written to {out}, step log to {step_log_path(out)}", err=True)


def _seeds_option(text: str | None) -> int | list[int] | None:
    """--seeds as the sweep file writes seeds: '3' is a count, '0,4' a list (checked by the spec's rules)."""
    if text is None:
        return None
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        _fail(f"--seeds must be a count (3 means seeds 0, 1, 2) or a comma-separated list of seeds, got {text!r}")
    return values if "," in text else (values[0] if values else text)


@cli.command()
@click.argument("spec_file", metavar="SPEC.yaml")
@click.option("--store", "store_path", default=None, help="results store (SQLite) [default: SPEC.sqlite beside the file]")
@click.option("--workers", type=int, default=1, show_default=True, help="runs side by side")
@click.option("--threads", type=int, default=None, help="torch threads per run [default: cores / workers; ray: 1]")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--address", default="local", show_default=True,
              help="ray: 'local' starts Ray here, 'auto' joins a running cluster, or ray://HOST:PORT")
@click.option("--data-dir", default=None, help="where the workers find the datasets (overrides the sweep file's)")
@click.option("--device", default=None,
              help="auto, cpu, cuda or cuda:N [default: the sweep file's, else auto]; with CUDA each local worker "
                   "takes one visible GPU, Ray tasks ask for one")
@click.option("--checkpoint-dir", default=None,
              help="task checkpoints of runs in flight (so a killed sweep's runs resume) and every run's step log "
                   "KEY.steps.jsonl [default: STORE.checkpoints; ray: none]")
@click.option("--stale-after", type=float, default=600.0, show_default=True,
              help="seconds without a heartbeat after which another host's running run is taken over")
@click.option("--vectorize", default=None, metavar="K|auto",
              help="train up to K runs that differ only in seed, c, re-init, lr or the measure's options as one "
                   "vectorised job (mlp, cifar-cnn); auto: as many as fit the device's memory (at most 64)")
@click.option("--seeds", "seeds_text", default=None, metavar="N|S,S,...",
              help="replaces the sweep file's seeds: a count (3 means 0, 1, 2) or a comma-separated list (5, is seed 5 alone)")
@click.option("--only", multiple=True, metavar="LABEL",
              help="run only this method of the sweep file (repeatable); the others keep their rows in reports")
@click.option("--dry-run", is_flag=True, help="validate, show what is stored and what would run next, run nothing")
def sweep(spec_file: str, store_path: str | None, workers: int, threads: int | None, backend: str, address: str,
          data_dir: str | None, device: str | None, checkpoint_dir: str | None, stale_after: float, vectorize: str | None,
          seeds_text: str | None, only: tuple[str, ...], dry_run: bool) -> None:
    """Grid search over c (extended at the edges) and seeds, resumable: every run is kept in a results store."""
    from clreg.sweeps import executors
    from clreg.sweeps.store import Store, StoreError
    from clreg.sweeps.plan import SweepDriver, plan
    from clreg.sweeps.spec import SpecError, load_spec, select

    if workers < 1 or (threads is not None and threads < 1):
        _fail("--workers and --threads must be >= 1")
    size = _vectorize_size(vectorize)
    if size is not None and backend == "ray":
        _fail("--vectorize runs its jobs locally; it does not combine with --backend ray")
    path = Path(store_path or Path(spec_file).with_suffix(".sqlite"))
    try:
        spec = load_spec(spec_file, seeds=_seeds_option(seeds_text))
        active = select(spec, only)
        store = Store(path, stale_after=stale_after) if path.exists() or not dry_run else None
    except (SpecError, StoreError) as err:
        _fail(str(err))
    runtime = {"device": "auto", **spec.runtime, **({"data_dir": data_dir} if data_dir else {}),
               **({"device": device} if device else {})}
    if backend == "local":
        try:
            resolve_device(runtime["device"])  # Ray nodes check their own
        except ValueError as err:
            _fail(str(err))
    if dry_run:  # creates nothing
        check_sweep_data(spec, runtime)
        wanted, _ = plan(active, SweepDriver(spec, store, None).lookup if store else lambda key: None)
        held = store.counts() if store else {}
        click.echo(f"{spec.name}: {len(active.entries)} of {len(spec.entries)} methods; store {path} holds {held or 'nothing'}; "
                   f"{len(wanted)} run(s) to start now: " + ", ".join(f"{c.method} c={c.c:g} b={c.batch_size} "
                                                                  f"seed {c.seed}" for c in wanted))
        return
    if checkpoint_dir is None and backend == "local":
        checkpoint_dir = str(store.path) + ".checkpoints"
    try:
        if size is not None:
            executor = executors.VectorizedExecutor(size, workers, threads, runtime, checkpoint_dir)
        elif backend == "ray":
            executor = executors.RayExecutor(address, workers if workers > 1 else None, threads, runtime, checkpoint_dir)
        elif workers == 1:
            executor = executors.InlineExecutor(threads, runtime, checkpoint_dir)
        else:
            executor = executors.ProcessExecutor(workers, threads, runtime, checkpoint_dir)
    except RuntimeError as err:
        raise click.ClickException(str(err)) from None
    at_once = f"{executor.slots} run(s) at a time" if size is None else \
        f"vectorised jobs of up to {size} run(s), {workers} job(s) at a time"
    click.echo(f"sweep {spec.name}: {len(active.entries)} of {len(spec.entries)} methods x {len(spec.seeds)} seeds "
               f"on {spec.benchmark}, {at_once}, {executor.threads} thread(s) each; store {store.path}", err=True)
    states = SweepDriver(spec, store, executor, log=lambda line: click.echo(line, err=True), only=only).run()
    executor.shutdown()
    from clreg.sweeps.report import entry_row, error_line, markdown

    click.echo(markdown([entry_row(spec, state) for state in states.values()]))
    failed = {row["key"]: row for state in states.values() for row in state.failed}
    if failed:
        labels = [label for label, state in states.items() if state.failed]
        raise click.ClickException(
            f"{len(failed)} run(s) failed, so {', '.join(labels)} got no result; first error: "
            f"{error_line(next(iter(failed.values())))}. Fix the cause and run the same command again (failed runs "
            "are retried, finished ones kept)")


def _vectorize_size(value: str | None) -> int | str | None:
    """--vectorize's K (an int >= 1), 'auto', or None when not given; exits with a message otherwise."""
    if value is None or value == "auto":
        return value
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1:
        _fail(f"--vectorize takes a number of runs >= 1 or 'auto', got {value!r}")
    return size


def check_sweep_data(spec, runtime: dict) -> None:
    """Load the data of the sweep's benchmark as its runs would (one config per distinct data setting):
    missing or unreadable data fails the dry run, not every run of the sweep."""
    from clreg.train.config import RunConfig

    seen = set()
    for entry in spec.entries:
        config = RunConfig.from_dict({**spec.config(entry, entry.c[0], entry.reinit[0], spec.seeds[0],
                                                     spec.final_evaluate_on).canonical(), **runtime})
        data = (config.benchmark, config.tasks, config.split_classes, config.permute, tuple(config.task_sizes or ()))
        if data not in seen:
            seen.add(data)
            load_data(config)


@cli.command()
@click.argument("store_path", metavar="STORE")
@click.option("--out-dir", default=None, help="write table.md, table.csv and the figures here [default: STORE.report]")
def report(store_path: str, out_dir: str | None) -> None:
    """The sweeps in a results store as table 1 (markdown, CSV) with grid-search and accuracy-matrix figures."""
    from clreg.sweeps.report import write_report
    from clreg.sweeps.store import Store, StoreError

    try:
        store = Store(store_path, create=False)
    except StoreError as err:
        _fail(str(err))
    if not store.sweeps():
        raise click.ClickException(f"store {store_path!r} holds no sweep (run `clreg sweep SPEC.yaml --store {store_path}`)")
    out = out_dir or store_path + ".report"
    data = write_report(store, out)
    click.echo(data["markdown"])
    click.echo(f"table.md, table.csv and {len(data['figures'])} figure files written to {out}", err=True)


@cli.group()
def store() -> None:
    """Results stores: take in runs kept as files."""


@store.command(name="import")
@click.argument("store_path", metavar="STORE")
@click.argument("files", metavar="FILE...", nargs=-1, required=True)
def store_import(store_path: str, files: tuple[str, ...]) -> None:
    """Add the finished runs of FILEs (runs.json from `clreg report`, results from `clreg run --out`) to
    STORE (created if missing), so that a sweep skips them. Runs the store holds finished are kept."""
    from clreg.sweeps.store import StoreError
    from clreg.sweeps.importing import ImportFileError, import_files

    try:
        imported = import_files(store_path, list(files))
    except (StoreError, ImportFileError) as err:
        _fail(str(err))
    click.echo(f"{store_path}: {imported.summary()}")


@cli.group()
def analyze() -> None:
    """The paper's analyses (docs/algorithms.md §9) on one training run: JSON data, PNG/SVG figures, summary.md."""


def _analysis_command(kind: str, doc: str, every_default: int):
    @analyze.command(name=kind, help=doc)
    @config_options
    @click.option("--out-dir", required=True, help="directory for the JSON, figures and summary.md")
    @click.option("--every", type=int, default=every_default, show_default=True,
                  help="steps between full training-set gradients (bias, noise)")
    @click.option("--record-every", type=int, default=1, show_default=True,
                  help="bias: keep the running sums every this many steps (and at each epoch's end), exact there; "
                       "1 keeps every step")
    @click.option("--large-samples", type=int, default=None,
                  help="measures: also Fisher and AF on this many samples, to correlate with --samples")
    @click.option("--scatter-points", type=int, default=100_000, show_default=True,
                  help="measures: weights sampled (seeded) for the scatter plots")
    @click.option("--pairs", default=",".join(f"{a}:{b}" for a, b in PAIRS), show_default=True,
                  help="measures: the pairs to correlate and scatter-plot, NAME:NAME separated by commas")
    @click.option("--also", "also", multiple=True, type=click.Choice([k for k in KINDS if k != kind]),
                  help="attach this analysis to the same training run (repeatable); each analysis then writes "
                       "into OUT_DIR/KIND")
    @checkpoint_options("the run and the records so far")
    @click.option("--extend", is_flag=True,
                  help="where OUT_DIR holds the JSON of an unfinished analysis of this run (written after every "
                       "task), train its tasks again without probes and record only the rest, appended to it")
    @click.option("--quiet", is_flag=True, help="no progress bars")
    def command(out_dir: str, every: int, record_every: int, large_samples: int | None, scatter_points: int,
                pairs: str, also: tuple[str, ...], checkpoint: str | None, resume: bool, extend: bool, quiet: bool,
                **options):
        config = make_config(**options)
        if min(every, record_every, scatter_points, large_samples or 1) < 1:
            _fail("--every, --record-every, --scatter-points and --large-samples must be >= 1")
        check_resume(checkpoint, resume)
        try:
            chosen = parse_pairs(pairs, large_samples)
        except ValueError as err:
            _fail(str(err))
        from clreg.analysis import analyze_together
        from clreg.train.checkpoint import CheckpointError

        kinds = (kind, *dict.fromkeys(also))
        dirs = {k: Path(out_dir) / k if len(kinds) > 1 else Path(out_dir) for k in kinds}
        bench = load_data(config)
        try:
            analyze_together(kinds, config, dirs, every, large_samples, scatter_points, not quiet, bench, chosen,
                             checkpoint, resume, extend, record_every)
        except (CheckpointError, ValueError) as err:
            _fail(str(err))
        for k in kinds:
            click.echo((dirs[k] / "summary.md").read_text())
        click.echo(f"{', '.join(kinds)}: JSON, figures and summary.md written to {out_dir}", err=True)
    return command


_analysis_command("measures", "Train once (SI by default) and compare every importance measure on that run: per "
                  "task, Pearson correlations over all parameters and log-log scatter plots (figures 1-2).", 10)
_analysis_command("bias", "SI's bias: running sums of SI, SIU and SIB per step against the path integral with "
                  "the full training-set gradient and the actual loss decrease; Σ SI / Σ SIU per task.", 10)
_analysis_command("noise", "Gradient noise: ‖g_batch − g_full‖², ‖g_full‖² and their ratio every k steps; the "
                  "fraction of steps whose ratio exceeds x (figure J.1).", 10)


@cli.command()
def methods() -> None:
    """List the importance measures: name and description, then each measure's own settings."""
    for name, cls in importance.REGISTRY.items():
        click.echo(f"{name:<17}{cls.description}")
        for option in cls.settings:
            click.echo(f"{'':<19}{option.cli_flag:<20}{option.help} [default: {option.shown_default}]")
    for alias, target in importance.ALIASES.items():
        click.echo(f"{alias:<17}alias of {target}")


@cli.command()
def benchmarks() -> None:
    """List the benchmarks with the defaults a run takes from them, and the (c, re-init) known per method."""
    from clreg.benchmarks import DEFAULTS, GENERIC_C

    for name, d in DEFAULTS.items():
        lr = f"{d.lr:g}" if d.lr is not None else "1e-3*b/256"
        click.echo(f"{name:<24}{d.network} {','.join(map(str, d.widths))}, {d.epochs} epochs, b={d.batch_size}, "
                   f"lr {lr}, xi {d.xi:g}, n={d.samples}")
        if d.methods:
            click.echo(f"{'':<24}c, re-init: " + ", ".join(f"{m} {c:g}{' r' if r else ''}"
                                                           for m, (c, r) in d.methods.items()))
    click.echo(f"other methods: c = {GENERIC_C:g}, re-init off (r: re-init on); choose c with `clreg sweep`")


DEMO_METHODS = ("finetune", "ewc", "si", "sos", "mas")  # at Permuted Digits' defaults (`clreg benchmarks`)


@cli.command()
@click.option("--seed", type=int, default=0, show_default=True)
def demo(seed: int) -> None:
    """Permuted Digits (no download): finetune, EWC, SI, SOS and MAS side by side in under a minute."""
    from clreg.benchmarks import permuted_digits
    from clreg.train.loop import run as run_config

    bench = permuted_digits(num_tasks=5, seed=seed)
    click.echo("Permuted Digits: 5 tasks of scikit-learn's 8x8 digits, MLP 64-200-200-10, 5 epochs per task, Adam lr 1e-3, batch 32")
    click.echo(f"{'method':<10}{'c':>8}{'avg accuracy':>15}{'forgetting':>12}{'seconds':>9}")
    for method in DEMO_METHODS:
        config = RunConfig(benchmark="permuted-digits", method=method, tasks=5, seed=seed)
        result = run_config(config, progress=False, bench=bench)
        seconds = result["timing"]["train_seconds"] + result["timing"]["importance_seconds"]
        click.echo(f"{method:<10}{config.c:>8g}{100 * result['average_accuracy']:>14.1f}%"
                   f"{100 * result['mean_forgetting']:>11.1f}%{seconds:>9.1f}")


def main() -> None:
    """Entry point: usage errors are one line on stderr with exit code 2."""
    try:
        cli.main(standalone_mode=False)
    except click.UsageError as err:
        click.echo(f"clreg: error: {err.format_message()}", err=True)
        sys.exit(2)
    except click.ClickException as err:
        click.echo(f"clreg: error: {err.format_message()}", err=True)
        sys.exit(err.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
