"""The ``dcasgd`` command line: ``train``, ``compare`` and ``report``.

Settings come, in increasing priority, from TrainConfig's defaults, a preset
(``--preset NAME``), a TOML file (``--config FILE``) and explicit flags.
Every bad input ends with one ``dcasgd: error: ...`` line and exit status 2;
how a run ended is one line and an exit status of its own (:data:`EXIT_STATUS_HELP`).

This module imports no torch at start-up: ``--help`` and argument errors are
immediate; the backends and the study tools are imported when a command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from .config import NOT_RESTORED_ON_RESUME, RESUME_MAY_CHANGE, ConfigError, TrainConfig
from .errors import InputError, RunFailed
from .names import AUGMENTS, BACKENDS, BACKUP_DTYPES, DATASETS, DEVICES, LOSSES, METRICS, MODELS, RULES, SCHEDULES
from .presets import PRESETS, load_config_file, load_preset, settings_from_toml
from .io.rundir import resume_run_dir

EXIT_OK, EXIT_RUN_FAILED, EXIT_BAD_INPUT = 0, 1, 2
EXIT_DIVERGED, EXIT_MAX_REFUSED, EXIT_NO_LIVE_WORKERS, EXIT_INTERRUPTED = 3, 4, 5, 130

EXIT_STATUS_HELP = """exit status:
  0    the run finished, or stopped where --stop-after-updates asked (continue it with --resume DIR)
  1    the run failed (a server actor died, a worker raised); --resume DIR continues from the last checkpoint
  2    bad input: one 'dcasgd: error:' line names it, and nothing was written
  3    the model diverged (a non-finite gradient or update); summary.json reports chance-level error
  4    stopped: a worker reached --max-refused refused pushes (a checkpoint was written)
  5    stopped: no live workers were left (every worker failed without rejoining)
  130  interrupted (Ctrl-C)
"""


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: ``dcasgd: error: ...`` and exit status 2, no usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"dcasgd: error: {message} (see '{self.prog} --help')\n")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


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
    g.add_argument("--consistency", default=S, metavar="{sync,async,ssp:S}",
                   help=f"when pushes apply (default {d.consistency}); sync with a dc-* rule has zero delay "
                        "and so behaves exactly as sgd")
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
    g.add_argument("--epochs", type=float, default=S, help=f"passes over the training set (default {d.epochs:g})")
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
                   help="take compute times from a recorded trace (lines with worker, duration_s)")
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
    r.add_argument("--address", default=S, help="Ray cluster address (default: start a local Ray on 127.0.0.1)")
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
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    if "resume" in flags:
        run_dir = resume_run_dir(flags["resume"])
        values.update(_checkpoint_settings(run_dir))
    if "preset" in flags:
        values.update(load_preset(flags.pop("preset")))
    if "config" in flags:
        values.update(load_config_file(flags.pop("config")))
    if "resume" in flags:
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
    return report_outcome(run(cfg).summary, Path(cfg.out))


def report_outcome(summary: dict[str, Any], out: Path) -> int:
    """Print how the run ended (one line) and return its exit status (:data:`EXIT_STATUS_HELP`)."""
    split = {"val": "validation", "train": "training"}.get(summary.get("eval_split"), "test")
    error, updates = _metric_text(summary), summary["updates"]
    outcome = summary.get("outcome", "finished")
    if outcome == "finished":
        print(f"final {split} error {error} after {updates} updates "
              f"(mean staleness {summary['mean_staleness']:.2f}); results in {out}/ (summary.json, metrics.jsonl)")
        return EXIT_OK
    if outcome == "stopped":
        print(f"stopped after {updates} updates as asked ({split} error {error} there); "
              f"results so far in {out}/; continue with: dcasgd train --resume {out}")
        return EXIT_OK
    if outcome == "diverged":
        print(f"dcasgd: the model diverged after {updates} updates (a non-finite gradient or update); "
              f"{split} error reported at chance level, {error}; results in {out}/", file=sys.stderr)
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
    if args.jobs < 1:
        raise ConfigError(f"jobs must be an integer >= 1, got {args.jobs}")
    if args.threads < 0:
        raise ConfigError(f"threads must be an integer >= 0, got {args.threads}")
    record = compare(base, grid, Path(args.run_out), args.jobs, args.threads)
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
group, method x workers x seed, test error) and lambda/ (the DC-ASGD-a lam0 sweep).  Protocols:
tuned (each method's own lr) and paper (sequential SGD's lr for every method).  Clusters
(homogeneous, lognormal speeds, stragglers) come from the preset's [compare.clusters] table.
Finished runs are reused when their recorded settings match; stale ones are moved to
OUT/stale/ and run again.  OUT must not hold a single training run (--overwrite removes it)."""


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="run the paper's comparison grid (resumable)", description=COMPARE_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_out", metavar="OUT", help="directory for the grid's run directories")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (default 1)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per run (default: cores / jobs); results are bit-reproducible "
                        "for the same value")
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
                   help="tuned (each method's own lr), paper (sequential SGD's lr for every method), or both "
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("dcasgd: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RunFailed as exc:
        print(f"dcasgd: run failed: {exc} (see summary.json; --resume DIR continues from the last checkpoint)",
              file=sys.stderr)
        return EXIT_RUN_FAILED
    except (InputError, OSError) as exc:
        print(f"dcasgd: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
