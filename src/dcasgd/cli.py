"""The ``dcasgd`` command line: ``train`` (and the subcommands later modules add).

Settings come, in increasing priority, from TrainConfig's defaults, a preset
(``--preset NAME``), a TOML file (``--config FILE``) and explicit flags.
Every bad input ends with one ``dcasgd: error: ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from .config import BACKENDS, DATASETS, SCHEDULES, ConfigError, TrainConfig
from .models import MODELS
from .presets import PRESETS, load_config_file, load_preset, settings_from_toml
from .rules import RULES

EXIT_BAD_INPUT = 2


def _input_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (each carries one clear message); anything else is a bug."""
    from .checkpoint import CheckpointError
    from .consistency import ConsistencyError
    from .data import DatasetError
    from .models import ModelError
    from .rules import RuleError
    from .server import PushRejected, ShardError, StateMismatch
    from .sim import TraceError
    return (ConfigError, CheckpointError, ConsistencyError, DatasetError, ModelError, RuleError, PushRejected,
            ShardError, StateMismatch, TraceError, OSError)


INPUT_ERRORS = _input_errors()


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
    g.add_argument("--dataset", choices=DATASETS, default=S, help=f"(default {d.dataset})")
    g.add_argument("--data-root", default=S, help="directory holding <dataset>/ (searched before $DCASGD_DATA, "
                   "~/.cache/dcasgd, /usr/share/datasets)")
    g.add_argument("--model", choices=MODELS, default=S, help=f"(default {d.model})")
    g.add_argument("--epochs", type=float, default=S, help=f"passes over the training set (default {d.epochs:g})")
    g.add_argument("--batch-size", type=int, default=S, help=f"mini-batch per worker b (default {d.batch_size})")
    g.add_argument("--seed", type=int, default=S, help=f"fixes data order, model init and simulated timing "
                   f"(default {d.seed})")
    g.add_argument("--out", default=S, help=f"run directory for metrics.jsonl and summary.json (default {d.out})")
    g.add_argument("--val-size", type=int, default=S, help="training samples held out for validation (default 0)")
    g.add_argument("--eval-split", choices=("test", "val"), default=S,
                   help="split that evaluations and final_test_error measure (default test)")
    g.add_argument("--eval-every", type=float, default=S, help=f"epochs between evaluations (default {d.eval_every:g})")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=S,
                   help="no live progress line")
    h = p.add_argument_group("update rule")
    h.add_argument("--lr", type=float, default=S, help=f"learning rate (default {d.lr:g})")
    h.add_argument("--momentum", type=float, default=S, help="heavy-ball momentum in [0, 1) (default 0)")
    h.add_argument("--wd", type=float, default=S, help="weight decay (default 0)")
    h.add_argument("--lam", type=float, default=S, help=f"dc-asgd-c: lambda (default {d.lam:g})")
    h.add_argument("--lam0", type=float, default=S, help=f"dc-asgd-a: lambda_0 (default {d.lam0:g})")
    h.add_argument("--m", type=float, default=S, help=f"dc-asgd-a: MeanSquare decay (default {d.m:g})")
    h.add_argument("--eps", type=float, default=S, help=f"dc-asgd-a: epsilon (default {d.eps:g})")
    h.add_argument("--per-worker-ms", action="store_true", default=S,
                   help="dc-asgd-a: one MeanSquare buffer per worker (Multiverso) instead of one global")
    h.add_argument("--backup-dtype", choices=("float32", "bfloat16"), default=S,
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
    o.add_argument("--resume", default=S, metavar="DIR", help="continue from the last checkpoint in DIR")
    o.add_argument("--stop-after-updates", type=int, default=S,
                   help="stop after this many updates with a checkpoint, to --resume later (0 = run to the end)")
    o.add_argument("--max-refused", type=int, default=S,
                   help="stop cleanly (with a checkpoint) when a worker has this many refused pushes (0 = never)")
    o.add_argument("--clip-norm", type=float, default=S, help="server-side gradient-norm clipping (0 = off)")
    r = p.add_argument_group("ray (--backend ray)")
    r.add_argument("--servers", type=int, default=S, help="parameter-server shards S (default 1)")
    r.add_argument("--address", default=S, help="Ray cluster address (default: start a local Ray on 127.0.0.1)")
    r.add_argument("--worker-restarts", type=int, default=S, help="times Ray restarts a dead worker (default 0)")
    r.add_argument("--device", choices=("cpu", "cuda"), default=S, help="worker compute device (default cpu)")


_RENAMES = {"straggler": "stragglers", "fail": "failures"}


def _checkpoint_settings(run_dir: str) -> dict[str, Any]:
    """The settings of the run a checkpoint came from (``--resume DIR`` starts from them)."""
    from .checkpoint import load_latest
    _, state = load_latest(Path(run_dir) / "checkpoints")
    saved = dict(state.get("config") or {})
    saved.pop("resume", None)
    return settings_from_toml(saved, f"checkpoint in {run_dir}")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < preset < --config file < explicit flags; then validate."""
    values: dict[str, Any] = {}
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    if "resume" in flags:
        values.update(_checkpoint_settings(flags["resume"]))
    if "preset" in flags:
        values.update(load_preset(flags.pop("preset")))
    if "config" in flags:
        values.update(load_config_file(flags.pop("config")))
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
    cfg = config_from_args(args)
    if cfg.backend == "ray":
        from .ray_backend import run_ray
        summary = run_ray(cfg)
    else:
        from .sim import run_sim
        summary = run_sim(cfg).summary
    out = Path(cfg.out)
    print(f"final test error {summary['final_test_error']:.2f}% after {summary['updates']} updates "
          f"(mean staleness {summary['mean_staleness']:.2f}); results in {out}/ "
          f"(summary.json, metrics.jsonl)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcasgd", description="Delay-compensated asynchronous SGD on a "
                                     "parameter server: simulated cluster or Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train one model", formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Train one model and write DIR/metrics.jsonl and DIR/summary.json.")
    add_train_flags(train)
    train.set_defaults(func=cmd_train)
    for extra in _extra_commands():
        extra(sub)
    return parser


def _extra_commands():
    """Subcommands that live in other modules (compare, report)."""
    try:
        from .experiment import register_commands
    except ImportError:
        return []
    return [register_commands]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("dcasgd: interrupted", file=sys.stderr)
        return 130
    except INPUT_ERRORS as exc:
        print(f"dcasgd: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RuntimeError as exc:
        from .ray_backend import RayBackendError
        if not isinstance(exc, RayBackendError):
            raise
        print(f"dcasgd: run failed: {exc} (see summary.json; --resume DIR continues from the last checkpoint)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
