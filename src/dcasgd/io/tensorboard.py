"""TensorBoard events for a run (``--tensorboard DIR``), an optional dependency.

:class:`TensorBoardLogger` wraps ``torch.utils.tensorboard.SummaryWriter``;
the x axis of every plot is the server version (number of applied updates).
Tags::

    train/loss  train/lr  train/staleness          one point per push
    eval/test_error_pct  eval/test_loss  eval/train_loss  eval/epoch
    staleness/histogram                            staleness counts so far (server versions)
    probe/relerr_{delayed,dc,taylor}  probe/cos_{...}  probe/staleness  probe/delta_norm

:func:`open_metrics` returns a :class:`~dcasgd.telemetry.MetricsWriter`, teed into a
logger when a directory is given, so a backend that writes ``update``/``eval``/
``staleness``/``probe`` lines gets TensorBoard events with one changed line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..errors import InputError
from .metrics import MetricsWriter

INSTALL_HINT = "--tensorboard needs the tensorboard package: pip install 'dcasgd[tensorboard]'"


class TensorBoardMissing(InputError):
    """``--tensorboard`` was given but the tensorboard package is not installed (bad input: exit status 2)."""


class TensorBoardLogger:
    """Scalars and staleness histograms of one run, written under ``log_dir``."""

    def __init__(self, log_dir: str | Path, flush_secs: int = 30) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TensorBoardMissing(INSTALL_HINT) from None
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir), flush_secs=flush_secs)

    def update(self, version: int, loss: float, lr: float | None = None, staleness: int | None = None) -> None:
        """One applied push: batch loss, learning rate, staleness (server versions)."""
        self.writer.add_scalar("train/loss", loss, version)
        if lr is not None:
            self.writer.add_scalar("train/lr", lr, version)
        if staleness is not None:
            self.writer.add_scalar("train/staleness", staleness, version)

    def evaluation(self, version: int, epoch: float, test_error: float, test_loss: float | None,
                   train_loss: float | None) -> None:
        """One evaluation: error in percent, mean cross-entropies (no test loss with an eval_fn), epoch reached."""
        self.writer.add_scalar("eval/test_error_pct", test_error, version)
        if test_loss is not None:
            self.writer.add_scalar("eval/test_loss", test_loss, version)
        if train_loss is not None:
            self.writer.add_scalar("eval/train_loss", train_loss, version)
        self.writer.add_scalar("eval/epoch", epoch, version)

    def staleness_histogram(self, version: int, counts: dict[int, int]) -> None:
        """Histogram of staleness values ``{staleness: number of pushes}``; one bucket per integer."""
        values = sorted((int(v), int(c)) for v, c in counts.items() if int(c) > 0)
        if not values:
            return
        num = sum(c for _, c in values)
        self.writer.add_histogram_raw(
            "staleness/histogram", min=values[0][0], max=values[-1][0], num=num,
            sum=sum(v * c for v, c in values), sum_squares=sum(v * v * c for v, c in values),
            bucket_limits=[v + 0.5 for v, _ in values], bucket_counts=[c for _, c in values],
            global_step=version)

    def probe(self, version: int, record: dict[str, Any]) -> None:
        """One compensation-probe record (see :mod:`dcasgd.engine.probe`)."""
        for key in ("relerr_delayed", "relerr_dc", "relerr_taylor", "cos_delayed", "cos_dc", "cos_taylor",
                    "staleness", "delta_norm"):
            if record.get(key) is not None:
                self.writer.add_scalar(f"probe/{key}", record[key], version)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class TeeMetrics:
    """A MetricsWriter that also sends update, eval, staleness and probe lines to TensorBoard.

    ``lr`` (optional) is called at each update line for the current learning rate.
    """

    def __init__(self, metrics: MetricsWriter, logger: TensorBoardLogger, lr: Callable[[], float] | None = None) -> None:
        self.metrics, self.logger, self.lr = metrics, logger, lr

    def __getattr__(self, name: str) -> Any:
        """Anything else (``path``, ``tell``, ...) is the MetricsWriter's."""
        return getattr(self.metrics, name)

    def write(self, kind: str, **fields: Any) -> None:
        self.metrics.write(kind, **fields)
        version = fields.get("version", 0)
        if kind == "update":
            self.logger.update(version, fields["loss"], self.lr() if self.lr else None, fields.get("staleness"))
        elif kind == "eval":
            self.logger.evaluation(version, fields["epoch"], fields["test_error"], fields["test_loss"],
                                   fields.get("train_loss"))
            if fields.get("lr") is not None and self.lr is None:
                self.logger.writer.add_scalar("train/lr", fields["lr"], version)
        elif kind == "staleness":
            histogram = fields.get("overall", {}).get("histogram", {})
            self.logger.staleness_histogram(version, {int(k): v for k, v in histogram.items()})
        elif kind == "probe":
            self.logger.probe(version, fields)

    def flush(self) -> None:
        self.metrics.flush()
        self.logger.flush()

    def close(self) -> None:
        try:
            self.metrics.close()
        finally:
            self.logger.close()


def open_metrics(path: str | Path, tensorboard_dir: str | Path | None = None,
                 lr: Callable[[], float] | None = None, append: bool = False) -> MetricsWriter | TeeMetrics:
    """A MetricsWriter on ``path``, teed into TensorBoard under ``tensorboard_dir`` when given.

    The logger is made first, so a missing tensorboard package raises
    :class:`TensorBoardMissing` (an InputError: exit status 2) before metrics.jsonl is touched.
    """
    if tensorboard_dir is None:
        return MetricsWriter(path, append=append)
    logger = TensorBoardLogger(tensorboard_dir)
    return TeeMetrics(MetricsWriter(path, append=append), logger, lr)
