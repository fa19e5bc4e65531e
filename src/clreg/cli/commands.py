"""Command line: `clreg run`, `clreg sweep`, `clreg report`, `clreg analyze`, `clreg methods`, `clreg demo`."""
from __future__ import annotations

import errno
import importlib.util
import json
import math
import os
import sqlite3
import sys
import warnings
from pathlib import Path

import click
import torch
import yaml
from click.exceptions import NoArgsIsHelpError

from clreg import importance
from clreg.train.config import BY_NAME, OPTIONS, RunConfig, read_run_file
from clreg.data import DataFileError
from clreg.data.fetch import check_data_dir
from clreg.core.device import check_combination, resolve_device
from clreg.core.extras import MissingExtra
from clreg.analysis.measures import PAIRS, parse_pairs
from clreg.analysis.run import KINDS
from clreg.core.options import Option, SettingError, check_threads
from clreg.core.records import DISK_FULL, check_writable, ensure_directory, provenance, write_json
from clreg.core.threads import choose_threads
from clreg.train.metrics import LEARNING_MARGIN
from clreg.train.progress import LongRunWarning, warnings_above_bars, write
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


def click_option(option: Option, default=None):
    """The command-line flag of a declared setting. Its default is None ("not given"), so that a run file
    (--config) and the setting's own default can fill it; the help shows the setting's default."""
    help_text = f"{option.help}  [default: {option.shown_default}]"
    if option.type is bool:
        flag = option.cli_flag
        return click.option(f"{flag}/--no-{flag[2:]}", option.name, default=default, help=help_text)
    return click.option(option.cli_flag, option.name, type=SettingType(option), default=default, help=help_text)


class PathText(click.ParamType):
    """A file or folder named on the command line: empty text is refused (it would silently write nothing)."""

    name = "path"

    def get_metavar(self, param, ctx=None) -> str:  # noqa: D102
        return "PATH"

    def convert(self, value, param, ctx):  # noqa: D102
        if not str(value).strip():
            self.fail("needs a file or folder name, got empty text", param, ctx)
        return value


PATH = PathText()


def cli_option(option: Option):
    """The flag of a command-line-only setting (threads, workers, ...): its value is read and checked by its
    declaration (Option.parse), as every run setting's is; not given, it is the declared default."""
    return click_option(option, default=option.default)


RUN_FILE = click.option("--config", "run_file", default=None, metavar="FILE",
                        help="take settings from FILE: YAML (setting: value) or a result JSON of `clreg run --out`, "
                             "which replays that run (its data directory too); flags given override it")
THREADS = cli_option(Option("threads", int, None, "torch threads for this run", minimum=1, check=check_threads,
                            default_text="the idle cores, cores - 1-minute load average"))


def config_options(command):
    """The flags that make a RunConfig, one per declared setting (clreg.train.config.OPTIONS), with --config and
    --threads; shared by `run` and the `analyze` commands."""
    for option in reversed(OPTIONS):
        command = click_option(option)(command)
    return THREADS(RUN_FILE(command))


def checkpoint_options(what: str, results: str):
    """--checkpoint FILE (saving `what` after every task), --resume and --overwrite (replacing `results` and
    the checkpoint where they exist); shared by `run` and `analyze`."""
    def decorate(command):
        command = click.option("--overwrite", is_flag=True,
                               help=f"replace {results} and the --checkpoint file where they exist (without it, "
                                    "existing files are refused)")(command)
        command = click.option("--resume", is_flag=True,
                               help="with --checkpoint: continue from the checkpoint if it exists")(command)
        return click.option("--checkpoint", default=None, type=PATH, help=f"save {what} to this file after every task")(command)
    return decorate


def check_output(path: str | Path, what: str) -> None:
    """A usage error unless the file `path` can be written (checked before any training)."""
    try:
        check_writable(path, what)
    except ValueError as err:
        _fail(str(err))


def check_resume(checkpoint: str | None, resume: bool, overwrite: bool, config: RunConfig) -> bool:
    """--checkpoint, --resume and --overwrite checked before any training: --resume needs --checkpoint; the
    checkpoint must be writable; an existing one is resumed (with --resume: refused if it is corrupted or of
    another run), replaced (--overwrite) or refused. Returns whether the run resumes."""
    if resume and checkpoint is None:
        _fail("--resume needs --checkpoint FILE (the file written after every task)")
    if checkpoint is None:
        return False
    check_output(checkpoint, "checkpoint")
    if not Path(checkpoint).exists():
        return False
    if resume:
        from clreg.train.checkpoint import CheckpointError, load

        try:
            load(checkpoint, config.canonical())
        except CheckpointError as err:
            _fail(str(err))
        return True
    if not overwrite:
        _fail(f"--checkpoint {checkpoint!r} already exists (another run's checkpoint?); add --resume to continue "
              "that run or --overwrite to replace it")
    return False


def make_config(run_file: str | None = None, **options) -> RunConfig:
    """A validated RunConfig from a run file and the flags given (flags win; the rest at their defaults);
    bad values and combinations become one-line usage errors."""
    try:
        settings = read_run_file(run_file) if run_file else {}
        settings.update({name: value for name, value in options.items() if value is not None})
        config = RunConfig.from_dict(settings)
        check_combination(resolve_device(config.device), config.precision)  # CUDA asked for but absent, tf32 on CPU
    except ValueError as err:
        _fail(flag_message(err))
    return config


def use_threads(threads: int | None) -> str:
    """Set torch's thread count: --threads, else the idle cores (clreg.core.threads); says which, for the
    run's header."""
    count, source = choose_threads(threads)
    torch.set_num_threads(count)
    return f"threads: {count} ({source})"


def flag_message(err: ValueError) -> str:
    """An error's message for the command line: settings named by their flags (--lr-min-factor)."""
    return err.cli_message() if isinstance(err, SettingError) else str(err)


def run_header(config: RunConfig, bench, threads: str) -> str:
    """What will run, with the settings a user most often leaves to the benchmark's defaults."""
    from clreg.train.loop import Trainer

    c, reinit, known = config.method_defaults()
    source = ""
    if (config.c, config.reinit) == (c, reinit):
        source = f" ({value_source(config)})" if known else " (no value known for this benchmark: a " \
            "generic default; choose c with `clreg sweep`)"
    steps = [Trainer.steps_for(config, bench, task) for task in range(bench.num_tasks)]
    warning = reinit_warning(config)
    return (f"clreg run: {config.method} c={config.c:g} re-init {'on' if config.reinit else 'off'}{source}\n"
            f"  {config.benchmark}: {bench.num_tasks} tasks x {config.epochs} epochs = {sum(steps):,} steps of "
            f"b={config.batch_size}, lr {config.learning_rate:g}, {config.optimizer}; {config.network_name} "
            f"{','.join(map(str, config.widths))}; {resolve_device(config.device)} {config.precision}; {threads}"
            + (f"\n  warning: {warning}" if warning else ""))


def table_settings(config: RunConfig) -> tuple[dict, dict]:
    """(the benchmark's defaults, this run's) for the settings its table's (c, re-init) were measured at: network,
    widths, epochs, batch size, learning rate and optimiser (docs/algorithms.md §10)."""
    from clreg.benchmarks import defaults

    table = defaults(config.benchmark)
    lr = table.lr if table.lr is not None else 1e-3 * table.batch_size / 256
    measured = {"network": table.network, "hidden": ",".join(map(str, table.widths)), "epochs": table.epochs,
                "b": table.batch_size, "lr": lr, "optimizer": BY_NAME["optimizer"].default}
    mine = {"network": config.network_name, "hidden": ",".join(map(str, config.widths)), "epochs": config.epochs,
            "b": config.batch_size, "lr": config.learning_rate, "optimizer": config.optimizer}
    return measured, mine


def value_source(config: RunConfig) -> str:
    """Where the benchmark's (c, re-init) come from: 'known good' only at the settings they were measured at."""
    measured, mine = table_settings(config)
    differ = [name for name in measured if mine[name] != measured[name]
              and not (name == "lr" and math.isclose(mine[name], measured[name]))]
    if not differ:
        return f"known good for {config.benchmark}"
    at = f"{measured['network']} {measured['hidden']} x {measured['epochs']} epochs, b={measured['b']}, " \
         f"lr {measured['lr']:g}, {measured['optimizer']}"
    return (f"from {config.benchmark}'s table at {at}; not measured at these settings "
            f"({', '.join(f'{name} {mine[name]:g}' if name == 'lr' else f'{name} {mine[name]}' for name in differ)}): "
            "choose c with `clreg sweep`")


REINIT_EPOCHS = 0.5  # re-init is warned about below this fraction of the epochs the benchmark's values were measured at


def reinit_warning(config: RunConfig) -> str | None:
    """A warning when re-init is on with so few epochs that a re-drawn network cannot recover (None: not so)."""
    measured, _ = table_settings(config)
    enough = math.ceil(REINIT_EPOCHS * measured["epochs"])
    if not config.reinit or config.epochs >= enough:
        return None
    return (f"re-init is on with {config.epochs} epoch(s) per task: every task restarts from freshly drawn shared "
            "weights, and so few epochs leave them too little time to recover (SI on permuted-mnist, 400,400, 3 "
            "tasks at 1 epoch: 39% average accuracy with re-init, 90% without); this benchmark's values were "
            f"measured at {measured['epochs']} epochs: use --epochs {enough} or more, or --no-reinit")


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
        _fail(flag_message(err))
    return bench


@cli.command()
@config_options
@click.option("--out", "out", default=None, type=PATH,
              help="write the results as JSON to this file, and the step log (JSON lines) beside it as "
                   "OUT-stem.steps.jsonl")
@cli_option(Option("log_every", int, None, "steps between two step-log records", minimum=1,
                   default_text="a task's steps / 200"))
@click.option("--tensorboard", default=None, type=PATH, metavar="DIR",
              help="also write the step log as TensorBoard event files into DIR (pip install 'clreg[tensorboard]')")
@checkpoint_options("the run's state", "the --out result")
@click.option("--quiet", is_flag=True, help="no progress bars")
@cli_option(Option("nproc", int, 1, "train data-parallel in this many processes (one GPU each on CUDA; gloo on the "
                   "CPU): each takes its share of every batch and of the importance sample, with one process's result",
                   minimum=1, check=check_threads))
@cli_option(Option("warn_after", float, 600.0, "say how long the run will take when the estimate (from its first "
                   "steps) exceeds this many seconds", minimum=0.0))
def run(out: str | None, log_every: int | None, tensorboard: str | None, checkpoint: str | None, resume: bool,
        overwrite: bool, quiet: bool, nproc: int, warn_after: float, **options) -> None:
    """Train a network on a task sequence with one method and report the accuracy matrix."""
    threads = options.pop("threads")
    config = make_config(**options)
    threads = use_threads(threads)
    resuming = check_resume(checkpoint, resume, overwrite, config)
    if out:
        check_output(out, "output")
        check_output(step_log_path(out), "step log")
        if Path(out).exists() and not overwrite:
            _fail(f"--out {out!r} already exists (an earlier result); add --overwrite to replace it, or choose "
                  "another file")
    try:
        if tensorboard:
            ensure_directory(tensorboard, "TensorBoard")
        sinks = [*([JsonLines(step_log_path(out))] if out else []), *([TensorBoard(tensorboard)] if tensorboard else [])] \
            if nproc == 1 else []  # (under --nproc, process 0 opens them)
    except ValueError as err:
        _fail(str(err))
    from clreg.train.loop import run as run_config  # imported late: keeps `clreg methods` and errors fast

    bench = load_data(config)
    click.echo(run_header(config, bench, threads), err=True)
    from clreg.train.guard import Diverged

    if resuming:
        click.echo(f"resuming from {checkpoint}", err=True)
    from clreg.train.nproc import ParallelRunError, launch

    try:
        if nproc > 1:
            result = launch(config, nproc, progress=not quiet, checkpoint_path=checkpoint, resume=resume,
                            log_path=str(step_log_path(out)) if out else None, tensorboard=tensorboard,
                            log_every=log_every)
        else:
            with warnings_above_bars():  # warnings and the time estimate print above the progress bars
                result = run_config(config, progress=not quiet, bench=bench, checkpoint_path=checkpoint,
                                    resume=resume, log=StepLog(sinks, every=log_every),
                                    callbacks=[LongRunWarning(write, warn_after)])
    except (Diverged, ParallelRunError) as err:
        raise click.ClickException(str(err)) from None
    except ValueError as err:  # a CheckpointError too: the file is the user's
        _fail(str(err))
    result.update(provenance(" ".join(["clreg", *sys.argv[1:]])), processes=nproc)
    click.echo(format_matrix(result["accuracy_matrix"]))
    click.echo(f"average accuracy {100 * result['average_accuracy']:.2f}%  "
               f"forgetting {100 * result['mean_forgetting']:.2f}%  BWT {100 * result['bwt']:.2f}%  "
               f"train {result['timing']['train_seconds']:.1f}s  importance {result['timing']['importance_seconds']:.1f}s")
    if result.get("did_not_learn"):
        click.echo(f"warning: this run did not learn: average accuracy {100 * result['average_accuracy']:.2f}% is "
                   f"below chance ({100 * result['chance']:.2f}%) + {100 * LEARNING_MARGIN:g} points "
                   "(docs/algorithms.md §5): check --lr, --c and --epochs", err=True)
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
    parts = text.split(",")
    try:
        values = [int(part) for part in (parts[:-1] if len(parts) == 2 and not parts[1].strip() else parts)]
    except ValueError:
        _fail(f"--seeds must be a count (3 means seeds 0, 1, 2) or a comma-separated list of seeds, got {text!r}")
    return values if "," in text else (values[0] if values else text)


@cli.command()
@click.argument("spec_file", metavar="SWEEP.yaml")
@click.option("--store", "store_path", default=None, type=PATH, help="results store (SQLite) [default: SWEEP.sqlite beside the file]")
@cli_option(Option("workers", int, 1, "runs side by side", minimum=1, check=check_threads))
@cli_option(Option("threads", int, None, "torch threads per run", minimum=1, check=check_threads,
                   default_text="the idle cores / workers; ray: 1"))
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--address", default="local", show_default=True,
              help="ray: 'local' starts Ray here, 'auto' joins a running cluster, or ray://HOST:PORT")
@click.option("--data-dir", default=None, type=PATH, help="where the workers find the datasets (overrides the sweep file's)")
@click.option("--device", default=None,
              help="auto, cpu, cuda or cuda:N [default: the sweep file's, else auto]; with CUDA each local worker "
                   "takes one visible GPU, Ray tasks ask for one")
@click.option("--checkpoint-dir", default=None, type=PATH,
              help="task checkpoints of runs in flight (so a killed sweep's runs resume) and every run's step log "
                   "KEY.steps.jsonl [default: STORE.checkpoints; ray: none]")
@cli_option(Option("stale_after", float, 600.0, "seconds without a heartbeat after which another host's running run "
                   "is taken over", minimum=0.0, above=True))
@click.option("--vectorize", default=None, metavar="K|auto",
              help="train up to K runs that differ only in seed, c, re-init, lr or the measure's options as one "
                   "vectorised job (mlp, cifar-cnn); auto: as many as fit the device's memory (at most 64)")
@click.option("--seeds", "seeds_text", default=None, metavar="N|S,S,...",
              help="replaces the sweep file's seeds: a count (3 means 0, 1, 2) or a comma-separated list (5, is seed 5 alone)")
@click.option("--only", multiple=True, metavar="LABEL",
              help="run only this method of the sweep file (repeatable); the others keep their rows in reports")
@click.option("--max-runs", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="refuse a sweep that plans more runs than this (seeds × c values × search lines, per method)")
@click.option("--dry-run", is_flag=True, help="validate, show what is stored and what would run next, run nothing")
def sweep(spec_file: str, store_path: str | None, workers: int, threads: int | None, backend: str, address: str,
          data_dir: str | None, device: str | None, checkpoint_dir: str | None, stale_after: float, vectorize: str | None,
          seeds_text: str | None, only: tuple[str, ...], max_runs: int, dry_run: bool) -> None:
    """Grid search over c (extended at the edges) and seeds, resumable: every run is kept in a results store."""
    from clreg.sweeps import executors
    from clreg.sweeps.plan import SweepDriver, plan
    from clreg.sweeps.spec import SpecError, load_spec, select

    size = _vectorize_size(vectorize)
    if size is not None and backend == "ray":
        _fail("--vectorize runs its jobs locally; it does not combine with --backend ray")
    path = Path(store_path or Path(spec_file).with_suffix(".sqlite"))
    try:
        spec = load_spec(spec_file, seeds=_seeds_option(seeds_text), max_runs=max_runs)
        active = select(spec, only)
    except SpecError as err:
        _fail(str(err))
    if backend == "ray" and importlib.util.find_spec("ray") is None:
        _fail("--backend ray needs Ray, which is not installed: pip install 'clreg[ray]' (or pip install ray)")
    runtime = {"device": "auto", **spec.runtime, **({"data_dir": data_dir} if data_dir else {}),
               **({"device": device} if device else {})}
    if backend == "local":
        try:
            check_data_dir(runtime.get("data_dir"))  # a folder that is not there: said before any run starts
            resolve_device(runtime["device"])  # Ray nodes check their own
        except ValueError as err:
            _fail(flag_message(err))
    if dry_run:  # creates nothing, writes nothing
        store = open_store(path, write=False) if path.exists() else None
        check_sweep_data(spec, runtime)
        wanted, _ = plan(active, SweepDriver(spec, store, None).lookup if store else lambda key: None)
        held = store.counts() if store else {}
        click.echo(f"{spec.name}: {len(active.entries)} of {len(spec.entries)} methods; store {path} holds {held or 'nothing'}; "
                   f"{len(wanted)} run(s) to start now: " + ", ".join(f"{c.method} c={c.c:g} b={c.batch_size} "
                                                                  f"seed {c.seed}" for c in wanted))
        return
    check_sweep_data(spec, runtime)  # missing data fails here, before a store is created or a run starts
    if checkpoint_dir is None and backend == "local":
        checkpoint_dir = str(path) + ".checkpoints"
    store = open_store(path, write=True, stale_after=stale_after)
    if checkpoint_dir is not None and backend == "local":
        try:  # a file or an unwritable place: said before any run starts
            ensure_directory(checkpoint_dir, "checkpoint")
        except ValueError as err:
            _fail(f"--checkpoint-dir: {err}")
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
               f"on {spec.benchmark}, {at_once}, threads: {executor.threads} each "
               f"({choose_threads(threads)[1] if threads or backend == 'local' else 'ray: 1'}); store {store.path}", err=True)
    try:
        states = SweepDriver(spec, store, executor, log=lambda line: click.echo(line, err=True), only=only).run()
    except sqlite3.DatabaseError as err:  # the store went bad under the sweep: what was recorded stays checked
        if "full" in str(err):
            raise
        raise click.ClickException(f"results store {str(path)!r}: {err}; `clreg store verify {path}` checks it") from None
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


def open_store(path: str | Path, write: bool, stale_after: float = 600.0):
    """The results store at `path`, checked (clreg.sweeps.store.Store.check: every row's checksum and
    result): opened read-only unless `write` (then created if missing, and refused, before anything is
    written, if it is a directory, cannot be written or fails its check). Usage errors otherwise."""
    from clreg.sweeps.store import Store, StoreError

    path = Path(path)
    try:
        if write and not path.is_dir():
            check_writable(path, "results store")
            directory = path.parent if str(path.parent) else Path(".")
            if not os.access(directory, os.W_OK):  # SQLite writes its journal beside the store
                raise StoreError(f"results store {str(path)!r}: its directory {str(directory)!r} is not writable")
        store = Store(path, stale_after=stale_after, readonly=not write)
        store.check()
    except ValueError as err:  # StoreError included
        _fail(str(err))
    if store.migrated:
        click.echo(store.migrated, err=True)
    return store


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
@click.option("--out-dir", default=None, type=PATH,
              help="write table.md, table.csv and the figures here, replacing an earlier report's [default: STORE.report]")
def report(store_path: str, out_dir: str | None) -> None:
    """The sweeps in a results store as table 1 (markdown, CSV) with grid-search and accuracy-matrix figures."""
    from clreg.sweeps.report import write_report

    store = open_store(store_path, write=False)  # read-only; refused naming the rows that fail their check
    if not store.sweeps():
        raise click.ClickException(f"store {store_path!r} holds no sweep (run `clreg sweep SWEEP.yaml --store {store_path}`)")
    out = out_dir or store_path + ".report"
    try:
        ensure_directory(out, "report")  # (a report is the store's view: an earlier one there is replaced)
    except ValueError as err:
        _fail(str(err))
    data = write_report(store, out)
    click.echo(data["markdown"])
    click.echo(f"table.md, table.csv and {len(data['figures'])} figure files written to {out}", err=True)


@cli.group()
def store() -> None:
    """Results stores: take in runs kept as files, check every stored result."""


@store.command(name="verify")
@click.argument("store_path", metavar="STORE")
def store_verify(store_path: str) -> None:
    """Check every row of STORE (opened read-only): its checksum, and for a finished run its result (the
    accuracy matrix and the metrics recomputed from it). Exit 0 when all pass, 2 naming the rows that fail."""
    from clreg.sweeps.store import Store, StoreError

    try:
        store = Store(store_path, readonly=True)
    except StoreError as err:
        _fail(str(err))
    found = store.verify()
    for line in found.failures:
        click.echo(f"FAILED {line}")
    if found.failures:
        _fail(f"{store_path}: {found.summary()}")
    counts = ", ".join(f"{n} {status}" for status, n in sorted(store.counts().items()))
    click.echo(f"{store_path}: {found.summary()} ({counts or 'no runs'})")


@store.command(name="import")
@click.argument("store_path", metavar="STORE")
@click.argument("files", metavar="FILE...", nargs=-1, required=True)
def store_import(store_path: str, files: tuple[str, ...]) -> None:
    """Add the finished runs of FILEs (runs.json from `clreg report`, results from `clreg run --out`) to
    STORE (created if missing), so that a sweep skips them. Runs the store holds finished are kept."""
    from clreg.sweeps.importing import ImportFileError, collect, import_files

    try:
        collect(list(files))  # every file checked before the store is opened (or created)
    except ImportFileError as err:
        _fail(str(err))
    store = open_store(store_path, write=True)
    try:
        imported = import_files(store, list(files))
    except ImportFileError as err:
        _fail(str(err))
    click.echo(f"{store_path}: {imported.summary()}")


@cli.group()
def analyze() -> None:
    """The paper's analyses (docs/algorithms.md §9) on one training run: JSON data, PNG/SVG figures, summary.md."""


def check_out_dir(dirs: dict[str, Path], replace: bool) -> None:
    """A usage error unless each analysis's directory can be written and, unless `replace` (--overwrite,
    --extend, or resuming the run that wrote them), holds no earlier analysis JSON."""
    for directory in dirs.values():
        try:
            ensure_directory(directory, "output")
        except ValueError as err:
            _fail(str(err))
    earlier = [str(dirs[k] / f"{k}.json") for k in dirs if (dirs[k] / f"{k}.json").exists()]
    if earlier and not replace:
        _fail(f"--out-dir already holds an earlier analysis ({', '.join(earlier)}); add --extend to continue it, "
              "--overwrite to replace it, or choose another directory")


def _analysis_command(kind: str, doc: str, every_default: int):
    @analyze.command(name=kind, help=doc)
    @config_options
    @click.option("--out-dir", required=True, type=PATH, help="directory for the JSON, figures and summary.md")
    @cli_option(Option("every", int, every_default, "steps between full training-set gradients (bias, noise)",
                       minimum=1))
    @cli_option(Option("record_every", int, 1, "bias: keep the running sums every this many steps (and at each "
                       "epoch's end), exact there; 1 keeps every step", minimum=1))
    @cli_option(Option("large_samples", int, None, "measures: also Fisher and AF on this many samples, to correlate "
                       "with --samples", minimum=1, default_text="none"))
    @cli_option(Option("scatter_points", int, 100_000, "measures: weights sampled (seeded) for the scatter plots",
                       minimum=1))
    @click.option("--pairs", default=",".join(f"{a}:{b}" for a, b in PAIRS), show_default=True,
                  help="measures: the pairs to correlate and scatter-plot, NAME:NAME separated by commas")
    @click.option("--also", "also", multiple=True, type=click.Choice([k for k in KINDS if k != kind]),
                  help="attach this analysis to the same training run (repeatable); each analysis then writes "
                       "into OUT_DIR/KIND")
    @checkpoint_options("the run and the records so far", "the analyses in --out-dir")
    @click.option("--extend", is_flag=True,
                  help="where OUT_DIR holds the JSON of an unfinished analysis of this run (written after every "
                       "task), train its tasks again without probes and record only the rest, appended to it")
    @click.option("--quiet", is_flag=True, help="no progress bars")
    def command(out_dir: str, every: int, record_every: int, large_samples: int | None, scatter_points: int,
                pairs: str, also: tuple[str, ...], checkpoint: str | None, resume: bool, overwrite: bool, extend: bool,
                quiet: bool, **options):
        threads = options.pop("threads")
        config = make_config(**options)
        resuming = check_resume(checkpoint, resume, overwrite, config)
        try:
            chosen = parse_pairs(pairs, large_samples)
        except ValueError as err:
            _fail(str(err))
        from clreg.analysis import analyze_together
        from clreg.train.checkpoint import CheckpointError

        kinds = (kind, *dict.fromkeys(also))
        dirs = {k: Path(out_dir) / k if len(kinds) > 1 else Path(out_dir) for k in kinds}
        check_out_dir(dirs, overwrite or extend or resuming)
        click.echo(f"clreg analyze {kind}: {use_threads(threads)}", err=True)
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
    width = max((len(o.cli_flag) for cls in importance.REGISTRY.values() for o in cls.settings), default=0) + 2
    for name, cls in importance.REGISTRY.items():
        click.echo(f"{name:<17}{cls.description}")
        for option in cls.settings:
            click.echo(f"{'':<19}{option.cli_flag:<{width}}{option.help} [default: {option.shown_default}]")
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
@cli_option(BY_NAME["seed"])
@THREADS
def demo(seed: int, threads: int | None) -> None:
    """Permuted Digits (no download): finetune, EWC, SI, SOS and MAS side by side (about 12 s on one thread)."""
    from clreg.benchmarks import permuted_digits
    from clreg.train.loop import run as run_config

    threads = use_threads(threads)
    bench = permuted_digits(num_tasks=5, seed=seed)
    click.echo("Permuted Digits: 5 tasks of scikit-learn's 8x8 digits, MLP 64-200-200-10, 5 epochs per task, Adam lr 1e-3, "
               f"batch 32; {threads}")
    click.echo(f"{'method':<10}{'c':>8}{'avg accuracy':>15}{'forgetting':>12}{'seconds':>9}")
    for method in DEMO_METHODS:
        config = RunConfig(benchmark="permuted-digits", method=method, tasks=5, seed=seed)
        result = run_config(config, progress=False, bench=bench)
        seconds = result["timing"]["train_seconds"] + result["timing"]["importance_seconds"]
        click.echo(f"{method:<10}{config.c:>8g}{100 * result['average_accuracy']:>14.1f}%"
                   f"{100 * result['mean_forgetting']:>11.1f}%{seconds:>9.1f}")


USER_PATH_ERRORS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                              errno.ENOENT, errno.ENAMETOOLONG, errno.ELOOP})  # a bad path the user gave


def failure(err: Exception) -> tuple[str, int]:
    """The one line (after `clreg: `) and the exit code of an exception no command turned into a usage error:
    a full disk (exit 1), another OSError naming its path (exit 2 for a bad path the user gave, else 1),
    an unreadable YAML, JSON or text file (exit 2); anything else is an internal error (exit 1)."""
    if isinstance(err, OSError) and err.errno is not None:
        where = " -> ".join(repr(str(f)) for f in (err.filename, err.filename2) if f is not None)
        if err.errno in DISK_FULL:
            quota = " (disk quota exceeded)" if err.errno == errno.EDQUOT else ""
            return f"error: no space left on device{quota}" + (f" writing {where}" if where else ""), 1
        if where:
            return f"error: {where}: {err.strerror}", 2 if err.errno in USER_PATH_ERRORS else 1
        return f"error: {err.strerror or err}", 1
    if isinstance(err, sqlite3.OperationalError) and "full" in str(err):
        return f"error: no space left on device for the results store (SQLite: {err})", 1
    if isinstance(err, UnicodeDecodeError):
        return f"error: a file is not UTF-8 text: {err}", 2
    if isinstance(err, json.JSONDecodeError):
        return f"error: invalid JSON: {err}", 2
    if isinstance(err, yaml.YAMLError):
        return "error: invalid YAML: " + " ".join(str(err).split()), 2
    message = " ".join(str(err).split())
    return (f"internal error: {type(err).__name__}: {message} (run with CLREG_DEBUG=1 for the traceback; please "
            "report it)"), 1


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"clreg: warning: {message}", err=True)


def main() -> None:
    """Entry point: every failure is one line on stderr. Usage errors and invalid files exit 2, runtime
    failures (a full disk) 1, an interrupt 130; anything unexpected is an internal error (exit 1) whose
    traceback CLREG_DEBUG=1 shows. Warnings are one line too."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            cli.main(prog_name="clreg", standalone_mode=False)
    except NoArgsIsHelpError as err:  # a bare `clreg` (or `clreg analyze`): the help, plain, exit 2 (click's way)
        err.show()
        sys.exit(err.exit_code)
    except MissingExtra as err:  # an optional dependency this command needs: one line naming its extra
        click.echo(f"clreg: error: {err}", err=True)
        sys.exit(1)
    except click.ClickException as err:  # a UsageError too: its exit code is 2
        click.echo(f"clreg: error: {err.format_message()}", err=True)
        sys.exit(err.exit_code)
    except click.Abort as err:
        interrupted = isinstance(err.__cause__, KeyboardInterrupt)
        click.echo("interrupted" if interrupted else "aborted", err=True)
        sys.exit(130 if interrupted else 1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as err:
        if os.environ.get("CLREG_DEBUG") == "1":
            raise
        message, code = failure(err)
        click.echo(f"clreg: {message}", err=True)
        sys.exit(code)
