"""The ``dcasgd`` command line: ``train``, ``compare``, ``report`` and ``fit``.

Settings come, in increasing priority, from TrainConfig's defaults, a preset
(``--preset NAME``), a TOML file (``--config FILE``) and explicit flags.
Every bad input ends with one ``dcasgd: error: ...`` line and exit status 2;
how a run ended is one line and an exit status of its own (:data:`EXIT_STATUS_HELP`).

This module imports no torch at start-up: ``--help`` and argument errors are
immediate; the backends and the study tools are imported when a command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Sequence

from .config import NOT_RESTORED_ON_RESUME, RESUME_MAY_CHANGE, ConfigError, TrainConfig
from .engine.signals import STOP, Stopped, exit_status, signal_name, stop_on_signals
from .errors import InputError, RunFailed, StorageError, UserCodeError, is_machine_failure
from .names import (AUGMENTS, BACKENDS, BACKUP_DTYPES, DATASETS, DEVICES, FIT_SHAPES, LOSSES, METRICS, MODELS, RULES,
                    SCHEDULES, TIMINGS)
from .presets import PRESETS, load_config_file, load_preset, settings_from_toml
from .io.rundir import resume_run_dir

EXIT_OK, EXIT_RUN_FAILED, EXIT_BAD_INPUT = 0, 1, 2
EXIT_DIVERGED, EXIT_MAX_REFUSED, EXIT_NO_LIVE_WORKERS, EXIT_STORAGE = 3, 4, 5, 6
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143

# How a run ended -> its exit status; the one table behind --help, the README and the tests.
EXIT_CODES = (
    (EXIT_OK, "the run finished (its epochs, --time-budget or --target-error; summary.json says which: "
              "ended_by), or stopped where --stop-after-updates asked (continue it with --resume DIR)"),
    (EXIT_RUN_FAILED, "the run failed: your model, loss, metric or data raised (the line names the function, the "
                      "worker and the gradient; --debug shows the traceback), or a server actor died; "
                      "summary.json says so, and --resume DIR continues from the last checkpoint if there is one"),
    (EXIT_BAD_INPUT, "bad input: one 'dcasgd: error:' line names it, and nothing was written (a directory another "
                     "dcasgd process is using counts: the line names its PID)"),
    (EXIT_DIVERGED, "the model diverged (a non-finite gradient, update or final metric); summary.json reports "
                    "chance-level error (null for a non-finite metric)"),
    (EXIT_MAX_REFUSED, "stopped: a worker reached --max-refused refused pushes (a checkpoint was written)"),
    (EXIT_NO_LIVE_WORKERS, "stopped: no live workers were left (every worker failed without rejoining)"),
    (EXIT_STORAGE, "the machine failed the run, not the input: the disk is full or a file could not be written "
                   "(the line names it); free space and --resume DIR continues from the last checkpoint"),
    (EXIT_INTERRUPTED, "interrupted by Ctrl-C (SIGINT): the run stopped cleanly, wrote summary.json and, with "
                       "--checkpoint-every, a checkpoint to --resume from; a second Ctrl-C stops at once"),
    (EXIT_TERMINATED, "terminated by SIGTERM: stopped cleanly as for Ctrl-C"),
)
EXIT_STATUS_HELP = "exit status:\n" + "".join(f"  {code:<4} {text}\n" for code, text in EXIT_CODES)


def exit_table_markdown() -> str:
    """The exit-status table of README.md (``scripts/bad_input_table.py --write`` puts it there)."""
    rows = "".join(f"| {code} | {text} |\n" for code, text in EXIT_CODES)
    return "| status | meaning |\n|---:|---|\n" + rows


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: ``dcasgd: error: ...`` and exit status 2, no usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"dcasgd: error: {message} (see '{self.prog} --help')\n")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _tables(text: str) -> tuple[tuple[float, ...], ...]:
    """Per-worker tables: ``Q,Q,.../Q,Q,...`` (a '/' between workers)."""
    return tuple(_floats(part) for part in text.split("/"))


def _straggler(text: str) -> tuple[int, float]:
    worker, sep, factor = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(worker), float(factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WORKER:FACTOR (e.g. 3:4.0), got {text!r}") from None


def _failure(text: str) -> tuple[int, float, float | None]:
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        return int(parts[0]), float(parts[1]), float(parts[2]) if len(parts) == 3 else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WORKER:FAIL_AT[:REJOIN_AT] (e.g. 2:50:120), got {text!r}") from None


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``train`` and ``compare``; defaults are TrainConfig's (shown in --help)."""
    d = TrainConfig()
    S = argparse.SUPPRESS
    g = p.add_argument_group("run")
    g.add_argument("--preset", choices=PRESETS, default=S, help="start from a preset (presets/NAME.toml)")
    g.add_argument("--config", metavar="FILE", default=S, help="TOML file of settings (keys as the long flags, "
                   "with _ for -); explicit flags override it")
    g.add_argument("--backend", choices=BACKENDS, default=S, help=f"where to run (default {d.backend})")
    g.add_argument("--rule", choices=RULES, default=S, help=f"server update rule (default {d.rule})")
    g.add_argument("--consistency", default=S,
                   metavar="{sync,async,ssp:S,msync:m,rennala:S,ringmaster:R,ringmaster-stop:R}",
                   help=f"when pushes apply (default {d.consistency}); sync with a dc-* rule has zero delay "
                        "and so behaves exactly as sgd. msync:m: each step averages the first m of the M "
                        "workers' gradients, the other jobs are cancelled; rennala:S (Rennala SGD): each step "
                        "averages the first S gradients taken at the current weights (a fast worker may give "
                        "several), then every worker restarts; ringmaster:R (Ringmaster ASGD): a gradient with "
                        "delay >= R is discarded and its worker restarts at the current weights; "
                        "ringmaster-stop:R: a job is cancelled as soon as its delay reaches R. On Ray these four "
                        "need --servers 1")
    g.add_argument("--workers", type=int, default=S, help=f"number of workers M (default {d.workers})")
    g.add_argument("--dataset", default=S, metavar="NAME|MODULE:FN",
                   help=f"{', '.join(DATASETS)} (default {d.dataset}), or an import path to a function "
                        "returning (train, test): each a Dataset of (input, target) pairs or a tensor pair")
    g.add_argument("--data-root", default=S, help="directory holding <dataset>/ (searched before $DCASGD_DATA, "
                   "~/.cache/dcasgd, /usr/share/datasets)")
    g.add_argument("--model", default=S, metavar="NAME|MODULE:FN",
                   help=f"{', '.join(MODELS)} (default {d.model}), or an import path to a zero-argument "
                        "function returning an nn.Module")
    g.add_argument("--loss", default=S, metavar="NAME|MODULE:FN",
                   help=f"{', '.join(LOSSES)} (default {d.loss}), or an import path to loss_fn(output, target) "
                        "-> scalar tensor (a batch mean)")
    g.add_argument("--metric", default=S, metavar="NAME|MODULE:FN",
                   help=f"{', '.join(METRICS)} (default {d.metric}: percent misclassified), or an import path to "
                        "metric(output, target) -> number (a batch mean, lower is better)")
    g.add_argument("--epochs", type=float, default=S, help=f"passes over the training set (default {d.epochs:g}); "
                   "with --time-budget, the epoch cap")
    g.add_argument("--time-budget", type=float, default=S, metavar="SECONDS",
                   help="stop when the training clock passes this many seconds (simulated; wall seconds of "
                        "training on Ray), with an evaluation at the budget; under a budget the lr schedule runs "
                        "to its end at whichever of the budget and --epochs comes first (default 0: none)")
    g.add_argument("--target-error", type=float, default=S, metavar="ERROR",
                   help="stop at the first evaluation at or below this error (the metric's units); "
                        "summary.json records time_to_target_s (default: none)")
    g.add_argument("--batch-size", type=int, default=S, help=f"mini-batch per worker b (default {d.batch_size})")
    g.add_argument("--seed", type=int, default=S, help=f"fixes data order, model init and simulated timing "
                   f"(default {d.seed})")
    g.add_argument("--out", default=S, help=f"run directory for metrics.jsonl and summary.json (default {d.out}; "
                   "with --resume DIR: DIR); a new run refuses a directory holding another run's files")
    g.add_argument("--overwrite", action="store_true", default=S,
                   help="let a new run replace the files of another run in --out (and --tensorboard)")
    g.add_argument("--val-size", type=int, default=S, help="training samples held out for validation (default 0)")
    g.add_argument("--eval-split", choices=("test", "val"), default=S,
                   help="split that evaluations and final_test_error measure (default test)")
    g.add_argument("--eval-every", type=float, default=S, help=f"epochs between evaluations (default {d.eval_every:g})")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=S,
                   help="no live progress line")
    g.add_argument("--threads", type=int, default=S,
                   help="torch threads (default 0: as torch has them; compare: cores / jobs per run); the "
                        "simulator's bits depend on it, and a resumed run warns when it changed")
    g.add_argument("--debug", action="store_true", default=S,
                   help="on a failure, also print the traceback (of your own code's exception, for one)")
    add_data_flags(p)
    h = p.add_argument_group("update rule")
    h.add_argument("--lr", type=float, default=S, help=f"learning rate (default {d.lr:g})")
    h.add_argument("--momentum", type=float, default=S,
                   help="heavy-ball momentum in [0, 1), for every rule (dana: each worker's own; default 0)")
    h.add_argument("--wd", type=float, default=S, help="weight decay (default 0)")
    h.add_argument("--lam", type=float, default=S, help=f"dc-asgd-c: lambda (default {d.lam:g})")
    h.add_argument("--lam0", type=float, default=S, help=f"dc-asgd-a: lambda_0 (default {d.lam0:g})")
    h.add_argument("--m", type=float, default=S, help=f"dc-asgd-a: MeanSquare decay (default {d.m:g})")
    h.add_argument("--eps", type=float, default=S, help=f"dc-asgd-a: epsilon (default {d.eps:g})")
    h.add_argument("--per-worker-ms", action="store_true", default=S,
                   help="dc-asgd-a: one MeanSquare buffer per worker (Multiverso) instead of one global")
    h.add_argument("--tau-c", type=int, default=S,
                   help="delay-adaptive: the concurrency tau_c; gradients staler than it get lr * tau_c / tau "
                        "(default 0: the number of workers)")
    h.add_argument("--delay-drop", action="store_true", default=S,
                   help="delay-adaptive: drop gradients staler than tau_c instead of scaling their step")
    h.add_argument("--ga-beta", type=float, default=S,
                   help=f"gap-aware: decay of the moving mean of squared steps (default {d.ga_beta:g})")
    h.add_argument("--adadelay-c", type=float, default=S,
                   help=f"adadelay: scale c of the delay term lr*c*sqrt(S/t)*sqrt(t+tau) (default {d.adadelay_c:g})")
    h.add_argument("--backup-dtype", choices=BACKUP_DTYPES, default=S,
                   help="dtype of the per-worker weight backups on the server (default float32)")
    h.add_argument("--lr-schedule", choices=SCHEDULES, default=S, help=f"(default {d.lr_schedule})")
    h.add_argument("--lr-milestones", type=_floats, default=S, metavar="E1,E2",
                   help="step schedule: epochs where lr is multiplied by --lr-gamma (paper: 80,120)")
    h.add_argument("--lr-gamma", type=float, default=S, help="step schedule factor (default 0.1)")
    h.add_argument("--warmup-epochs", type=float, default=S, help="linear lr warm-up (default 0)")
    s = p.add_argument_group("simulated cluster (--backend sim; times in simulated seconds; "
                             "Ray emulates --speeds, --hetero-sigma and --straggler)")
    s.add_argument("--base-time", type=float, default=S, help=f"compute time of one mini-batch (default {d.base_time:g})")
    s.add_argument("--speeds", type=_floats, default=S, metavar="S0,S1,...",
                   help="per-worker time factors (one per worker; 2 = twice as slow); "
                        "on Ray too: workers sleep to match, relative to the fastest")
    s.add_argument("--hetero-sigma", type=float, default=S,
                   help="draw per-worker time factors exp(sigma*N(0,1)) from the seed (default 0; on Ray too)")
    s.add_argument("--jitter", type=float, default=S, help="lognormal sigma of per-gradient noise (default 0)")
    s.add_argument("--straggler", type=_straggler, action="append", default=S, metavar="W:F",
                   help="worker W is F times slower (repeatable), e.g. --straggler 3:4.0; on Ray too")
    s.add_argument("--comm-time", type=float, default=S, help="time of each pull and each push (default 0)")
    s.add_argument("--fail", type=_failure, action="append", default=S, metavar="W:T[:R]",
                   help="worker W fails at time T and rejoins at R (repeatable)")
    s.add_argument("--corrupt", type=_straggler, action="append", default=S, metavar="W:P",
                   help="fault injection: worker W sends a NaN gradient with probability P (repeatable)")
    s.add_argument("--replay", default=S, metavar="TRACE.jsonl",
                   help="take each worker's cycles from a recorded trace.jsonl (whole cycles: pull, compute, "
                        "emulated slowness, push; an older trace's compute times get --comm-time around them)")
    s.add_argument("--timing", choices=TIMINGS, default=S,
                   help=f"per-gradient noise: model (lognormal, --jitter/--jitters) or empirical (inverse-CDF "
                        f"draws from --timing-quantiles); default {d.timing}; see docs/timing-model.md")
    s.add_argument("--jitters", type=_floats, default=S, metavar="S0,S1,...",
                   help="per-worker lognormal sigma of the per-gradient noise (in place of --jitter)")
    s.add_argument("--timing-quantiles", type=_tables, default=S, metavar="Q,Q,.../Q,Q,...",
                   help="--timing empirical: each worker's noise quantiles at evenly spaced probabilities "
                        "0..1, workers separated by '/' (dcasgd fit writes them)")
    o = p.add_argument_group("observability and reliability")
    o.add_argument("--probe-every", type=int, default=S,
                   help="every K-th push, measure how well compensation approximates the fresh gradient (0 = off)")
    o.add_argument("--tensorboard", default=S, metavar="DIR", help="also write TensorBoard events to DIR")
    o.add_argument("--checkpoint-every", type=int, default=S, help="checkpoint every N updates (0 = off)")
    o.add_argument("--keep-checkpoints", type=int, default=S, help="checkpoints kept (default 3)")
    o.add_argument("--resume", default=S, metavar="DIR",
                   help="continue the run in DIR (or DIR/checkpoints) from its newest checkpoint that verifies, "
                        "writing into DIR (or --out); settings come from the checkpoint except the stop "
                        "conditions (--stop-after-updates, --max-refused start at 0), and only "
                        f"{', '.join(sorted(RESUME_MAY_CHANGE - {'resume', 'out'}))} may be changed")
    o.add_argument("--stop-after-updates", type=int, default=S,
                   help="stop after this many updates with a checkpoint; continue later with --resume DIR "
                        "(0 = run to the end)")
    o.add_argument("--max-refused", type=int, default=S,
                   help="stop (exit status 4, with a checkpoint) when a worker has this many refused pushes "
                        "(0 = never)")
    o.add_argument("--clip-norm", type=float, default=S, help="server-side gradient-norm clipping (0 = off)")
    r = p.add_argument_group("ray (--backend ray)")
    r.add_argument("--servers", type=int, default=S, help="parameter-server shards S (default 1)")
    r.add_argument("--address", default=S, help="Ray cluster address (default: start a local Ray on 127.0.0.1); "
                   "compare with the simulator: run each run as a task on that cluster")
    r.add_argument("--connect-timeout", type=float, default=S,
                   help=f"seconds to connect to the Ray cluster at --address before giving up (default "
                        f"{d.connect_timeout:g})")
    r.add_argument("--worker-restarts", type=int, default=S, help="times Ray restarts a dead worker (default 0)")
    r.add_argument("--device", choices=DEVICES, default=S, help="worker compute device (default cpu)")


def add_data_flags(p: argparse.ArgumentParser) -> None:
    """The data path: how batches are read, transformed and scored (import paths MODULE:FN)."""
    S = argparse.SUPPRESS
    g = p.add_argument_group("data path (a Dataset other than tensors is read lazily, each worker its own batches)")
    g.add_argument("--step", default=S, metavar="MODULE:FN",
                   help="step_fn(model, batch) -> loss (a scalar tensor, the batch mean) instead of "
                        "--loss(model(input), target): batches of any structure (a dict, nested tensors)")
    g.add_argument("--eval", default=S, metavar="MODULE:FN",
                   help="eval_fn(model, batch) -> (metric_sum, count) instead of --metric: evaluations report "
                        "sum(metric_sum) / sum(count); eval lines then carry no test_loss")
    g.add_argument("--transform", default=S, metavar="MODULE:FN",
                   help="a random per-sample transform of each training input (targets untouched); its draws "
                        "from torch, random and numpy are seeded per batch from (seed, worker, batch number)")
    g.add_argument("--collate", default=S, metavar="MODULE:FN",
                   help="collate_fn(items) -> batch (default: default_collate, floats as float32)")
    g.add_argument("--augment", choices=AUGMENTS, default=S,
                   help="built-in augmentation of image tensors: crop-flip = 4-pixel padding, a random crop back "
                        "to the image size, a horizontal flip (CIFAR-10's standard; default none)")
    g.add_argument("--loader-workers", type=int, default=S, metavar="N",
                   help="processes building a lazy Dataset's batches ahead, as DataLoader's num_workers (default 0; "
                        "the same bits as without)")


_RENAMES = {"straggler": "stragglers", "fail": "failures"}


def _checkpoint_settings(run_dir: Path) -> dict[str, Any]:
    """The settings of the run a checkpoint came from, less NOT_RESTORED_ON_RESUME."""
    from .io.checkpoint import load_latest
    _, state = load_latest(run_dir / "checkpoints")
    saved = {k: v for k, v in dict(state.get("config") or {}).items() if k not in NOT_RESTORED_ON_RESUME}
    return settings_from_toml(saved, f"checkpoint in {run_dir}")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < checkpoint (--resume) < preset < --config file < explicit flags; then validate.

    ``--resume DIR`` writes into DIR unless ``--out`` is given; the stop
    conditions (:data:`dcasgd.config.NOT_RESTORED_ON_RESUME`) start from their
    defaults, not from the checkpoint, so ``--stop-after-updates`` does not
    come back with it.
    """
    values: dict[str, Any] = {}
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "func", "debug")}
    preset = load_preset(flags.pop("preset")) if "preset" in flags else {}
    from_file = load_config_file(flags.pop("config")) if "config" in flags else {}
    resume = flags.get("resume", from_file.get("resume"))
    if resume:                                       # --resume DIR, or resume = "DIR" in the --config file
        run_dir = resume_run_dir(resume)
        values.update(_checkpoint_settings(run_dir))
    values.update(preset)
    values.update(from_file)
    if resume and "out" not in from_file:
        values["out"] = str(run_dir)
    for key, value in flags.items():
        key = _RENAMES.get(key, key)
        if key in ("stragglers", "corrupt"):
            value = dict(value)
        elif key == "failures":
            value = tuple(value)
        values[key] = value
    known = set(TrainConfig.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}")
    return TrainConfig(**values).validate()


def cmd_train(args: argparse.Namespace) -> int:
    from .api import run
    cfg = config_from_args(args)
    try:
        summary = run(cfg).summary
    except RunFailed as exc:
        exc.run_dir = Path(cfg.out)                  # (main's line names its files)
        raise
    return report_outcome(summary, Path(cfg.out))


def failure_line(exc: RunFailed) -> tuple[str, int]:
    """The line and exit status of a run that failed: the machine's (a storage failure), or the run's (the
    user's code, a lost server), with pointers to the files of its run that exist."""
    out = getattr(exc, "run_dir", None)
    if isinstance(exc, StorageError):
        where = "" if out is None else f"; the run stopped{_pointers(out, resume_hint='free space, then ')}"
        return f"dcasgd: storage failure: {exc}{where}", EXIT_STORAGE
    where = "" if out is None else _pointers(out)
    debug = "; --debug shows the traceback" if isinstance(exc, UserCodeError) else ""
    return f"dcasgd: run failed: {exc}{where}{debug}", EXIT_RUN_FAILED


def _pointers(out: Path, resume_hint: str = "") -> str:
    """Where to look and how to go on, naming only files that exist."""
    from .io.checkpoint import list_checkpoints
    text = ""
    if (out / "summary.json").is_file():
        text += f"; summary in {out}/summary.json"
    if list_checkpoints(out / "checkpoints"):
        text += f"; {resume_hint}continue with: {resume_command(out)}"
    return text


def resume_command(out: Path) -> str:
    return f"dcasgd train --resume {shlex.quote(str(out))}"


def _show_traceback(args: argparse.Namespace, exc: BaseException) -> None:
    if getattr(args, "debug", False):
        traceback.print_exception(exc, file=sys.stderr)


def report_outcome(summary: dict[str, Any], out: Path) -> int:
    """Print how the run ended (one line) and return its exit status (:data:`EXIT_CODES`)."""
    split = {"val": "validation", "train": "training"}.get(summary.get("eval_split"), "test")
    error, updates = _metric_text(summary), summary["updates"]
    outcome = summary.get("outcome", "finished")
    if outcome == "finished":
        print(f"final {split} error {error} after {updates} updates "
              f"(mean staleness {summary['mean_staleness']:.2f}){_ended_by_text(summary)}; "
              f"results in {out}/ (summary.json, metrics.jsonl)")
        return EXIT_OK
    if outcome == "stopped":
        print(f"stopped after {updates} updates as asked ({split} error {error} there); "
              f"results so far in {out}/; continue with: {resume_command(out)}")
        return EXIT_OK
    if outcome == "interrupted":
        signum = STOP.signum or signal.SIGINT
        how = "interrupted (Ctrl-C)" if signum == signal.SIGINT else f"terminated ({signal_name(signum)})"
        print(f"dcasgd: {how} after {updates} updates ({split} error {error} there){_pointers(out)}",
              file=sys.stderr)
        return exit_status(signum)
    if outcome == "diverged":
        what = ("its final metric is not a number" if summary.get("metric_not_finite")
                else "a non-finite gradient or update")
        print(f"dcasgd: the model diverged after {updates} updates ({what}); "
              f"{split} error reported as {error}; results in {out}/", file=sys.stderr)
        return EXIT_DIVERGED
    if outcome == "max_refused":
        refused = summary.get("refused_per_worker") or [0]
        worst = max(range(len(refused)), key=lambda m: refused[m])
        print(f"dcasgd: stopped after {updates} updates: worker {worst} had {refused[worst]} refused pushes "
              f"(--max-refused {summary['config'].get('max_refused')}); checkpoint in {out}/checkpoints, "
              f"events in {out}/metrics.jsonl", file=sys.stderr)
        return EXIT_MAX_REFUSED
    print(f"dcasgd: stopped after {updates} updates: no live workers were left (see worker_events in "
          f"{out}/summary.json)", file=sys.stderr)
    return EXIT_NO_LIVE_WORKERS


def _ended_by_text(summary: dict[str, Any]) -> str:
    """Why a finished run ended, when a target or a time budget ended it (nothing for the epochs)."""
    ended_by = summary.get("ended_by")
    if ended_by == "target":
        return (f", target {summary['target_error']:g} reached at {summary['time_to_target_s']:.6g} s "
                f"(epoch {summary['target_epoch']:.4g})")
    if ended_by == "time_budget":
        return f", at the end of the time budget ({summary['time_budget_s']:g} s)"
    return ""


def _metric_text(summary: dict[str, Any]) -> str:
    """The final metric as the console shows it: percent for classification error, else the number."""
    value = summary["final_test_error"]
    if value is None:
        return "n/a"
    percent = summary.get("metric", "dcasgd.compute.objectives:classification_error").endswith(
        ":classification_error")
    return f"{value:.2f}%" if percent else f"{value:.6g}"


def cmd_compare(args: argparse.Namespace) -> int:
    from .study.compare import compare, study_grid
    grid = study_grid(getattr(args, "preset", None) or getattr(args, "config", None),
                      {key: getattr(args, f"grid_{key}") for key in _GRID_FLAGS
                       if getattr(args, f"grid_{key}", None) is not None},
                      getattr(args, "val_size", None))
    flags = argparse.Namespace(**{k: v for k, v in vars(args).items()
                                  if not k.startswith("grid_") and k not in ("jobs", "threads", "run_out")})
    base = config_from_args(flags)
    threads = getattr(args, "threads", 0)
    if args.jobs < 1:
        raise ConfigError(f"jobs must be an integer >= 1, got {args.jobs}")
    if threads < 0:
        raise ConfigError(f"threads must be an integer >= 0, got {threads}")
    # compare's own meaning of two train flags: --time-budget is the study's budget for every cluster, and
    # with the simulator --address is the Ray cluster that runs the study's runs as tasks
    if base.time_budget > 0:
        grid, base = {**grid, "time_budget": base.time_budget}, dataclasses.replace(base, time_budget=0.0)
    address = base.address if base.backend == "sim" else None
    base = dataclasses.replace(base, address=None) if address else base
    from .study.compare import Interrupted
    try:
        record = compare(base, grid, Path(args.run_out), args.jobs, threads, address)
    except Interrupted as exc:
        print(f"dcasgd: compare stopped by {exc}: queued runs cancelled, running ones stopped; "
              f"the next 'dcasgd compare {shlex.quote(args.run_out)} ...' with the same settings goes on from "
              f"the finished runs", file=sys.stderr)
        return exit_status(exc.signum)
    print(f"compare finished: {Path(args.run_out)}/ (chosen learning rates: {record['chosen_lr']}); "
          f"next: dcasgd report {args.run_out}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from .study.report import write_report
    written = write_report(Path(args.run_dir), Path(args.to) if args.to else None,
                           Path(args.probe) if args.probe else None)
    print("wrote " + ", ".join(str(p) for p in written))
    return EXIT_OK


_GRID_FLAGS = ("methods", "workers", "seeds", "lr_grid", "lam0_grid", "ssp_bound", "protocols", "momenta")


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


COMPARE_HELP = """Run the paper's comparison as a resumable grid of simulated (or Ray) runs under OUT/:
lr/ (learning rates chosen on a validation split), final/ (every cluster x protocol x momentum
group, method x workers x seed, test error) and lambda/ (the DC-ASGD-a lam0 sweep).  Every run of
a cluster gets the same simulated-time budget (default: the time sequential SGD needs for the
preset's epochs; --time-budget SECONDS sets it, 0 turns it off) and stops there or at an epoch cap
(the preset's [compare] epoch_caps, epoch_cap_factor).  Protocols: tuned (each method's own lr,
and S/m/R of Rennala, m-sync, Ringmaster) and paper (every asynchronous method at ASGD's tuned lr).
Clusters (homogeneous, lognormal speeds, stragglers) come from the preset's [compare.clusters]
table.  Runs execute in --jobs local processes, or with --address ADDR (simulator) as tasks on
that Ray cluster, with the same results.  Finished runs are reused when their recorded settings
match; stale ones are moved to OUT/stale/ and run again.  OUT must not hold a single training run
(--overwrite removes it)."""


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="run the paper's comparison grid (resumable)", description=COMPARE_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_out", metavar="OUT", help="directory for the grid's run directories")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (default 1)")
    p.add_argument("--methods", dest="grid_methods", type=_names, default=None,
                   help="comma-separated methods (default: all, or the preset's)")
    p.add_argument("--workers-grid", dest="grid_workers", type=_ints, default=None, metavar="M1,M2",
                   help="worker counts (default 1,4,8,16,32 or the preset's)")
    p.add_argument("--seeds", dest="grid_seeds", type=_ints, default=None, help="seeds (default 0,1,2)")
    p.add_argument("--lr-grid", dest="grid_lr_grid", type=_float_list, default=None,
                   help="learning rates searched on the validation split")
    p.add_argument("--lam0-grid", dest="grid_lam0_grid", type=_float_list, default=None,
                   help="lam0 values for the DC-ASGD-a M=8 sweep (lambda.png)")
    p.add_argument("--ssp-bound", dest="grid_ssp_bound", type=int, default=None, help="S of the ssp method")
    p.add_argument("--protocols", dest="grid_protocols", type=_names, default=None,
                   help="tuned (each method's own lr), paper (every asynchronous method at ASGD's lr), or both "
                        "(default tuned, or the preset's)")
    p.add_argument("--momenta", dest="grid_momenta", type=_float_list, default=None, metavar="MU1,MU2",
                   help="momentum values, one group each (default 0, or the preset's)")
    add_train_flags(p)
    p.set_defaults(func=cmd_compare)


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("report", help="tables and plots from a compare directory")
    r.add_argument("run_dir", metavar="DIR", help="a directory written by dcasgd compare")
    r.add_argument("--to", default=None, help="where to write (default: DIR)")
    r.add_argument("--probe", default=None, metavar="RUN_DIR",
                   help="a run made with --probe-every: adds compensation.png and compensation.md")
    r.set_defaults(func=cmd_report)


FIT_HELP = """Fit the simulator's timing model to a real run: per-worker speed, the shape of each
worker's per-gradient cycle time (empirical quantiles resampled with the run's seed, or a lognormal),
and the communication time, from RUN_DIR/trace.jsonl (any run of dcasgd train writes one).  Writes
FILE.toml with the run's settings and the fitted model, for train and compare (--config FILE.toml),
and prints per-worker mean and p90 of the cycle, measured against fitted.  See docs/timing-model.md."""


def cmd_fit(args: argparse.Namespace) -> int:
    from .engine.fit import check_table, fit_run, toml_text
    from .io.atomic import atomic_write_text
    fit = fit_run(args.run_dir, args.shape, *([args.quantiles] if args.quantiles else []))
    atomic_write_text(Path(args.to), toml_text(fit, Path(args.run_dir), args.shape))
    TrainConfig(**load_config_file(args.to)).validate()          # what train --config will read
    print("\n".join(check_table(fit)))
    print(f"wrote {args.to} (timing {fit.settings['timing']}, {fit.workers} workers); "
          f"next: dcasgd train --config {args.to} --out DIR")
    return EXIT_OK


def add_fit_parser(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("fit", help="fit the simulator's timing model to a run's trace.jsonl", description=FIT_HELP)
    f.add_argument("run_dir", metavar="RUN_DIR", help="a run directory holding trace.jsonl (and summary.json)")
    f.add_argument("--to", required=True, metavar="FILE.toml", help="where to write the fitted configuration")
    f.add_argument("--shape", choices=FIT_SHAPES, default=FIT_SHAPES[0],
                   help="empirical: per-worker quantile tables (the default); lognormal: per-worker sigma")
    f.add_argument("--quantiles", type=int, default=None,
                   help="empirical: quantiles per worker table, evenly spaced 0..1 (default 41: every 2.5%%)")
    f.set_defaults(func=cmd_fit)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dcasgd", description="Delay-compensated asynchronous SGD on a parameter server: "
                    "simulated cluster or Ray.", epilog=EXIT_STATUS_HELP,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    train = sub.add_parser("train", help="train one model", formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Train one model and write DIR/metrics.jsonl and DIR/summary.json.",
                           epilog=EXIT_STATUS_HELP)
    add_train_flags(train)
    train.set_defaults(func=cmd_train)
    add_compare_parser(sub)
    add_report_parser(sub)
    add_fit_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with stop_on_signals():
            return args.func(args)
    except Stopped as exc:                             # outside a loop that stops cleanly, or a second Ctrl-C
        print(f"dcasgd: stopped by {exc} at once", file=sys.stderr)
        return exit_status(exc.signum)
    except KeyboardInterrupt:
        print("dcasgd: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RunFailed as exc:
        _show_traceback(args, exc)
        line, status = failure_line(exc)
        print(line, file=sys.stderr)
        return status
    except OSError as exc:
        _show_traceback(args, exc)
        if is_machine_failure(exc):
            print(f"dcasgd: storage failure: {exc}", file=sys.stderr)
            return EXIT_STORAGE
        print(f"dcasgd: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except InputError as exc:
        _show_traceback(args, exc)
        print(f"dcasgd: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
