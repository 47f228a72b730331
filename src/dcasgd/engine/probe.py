"""Compensation quality probe: how well does each rule guess the gradient it missed?

A push from worker m carries ``g(w_bak)``, the gradient at the weights it
pulled ``tau`` versions ago, while the server would like ``g(w_now)``.  Every
K-th push the probe recomputes ``g(w_now)`` on the *same* mini-batch with the
*same* dropout key and BatchNorm statistics (only the weights differ) and
scores three estimates of it, with ``v = w_now - w_bak``::

    delayed   g(w_bak)                                   what plain ASGD applies
    dc        g(w_bak) + lam_eff * g*g * v                the DC-ASGD approximation (diagonal g*g ~ H)
    taylor    g(w_bak) + H(w_bak) v                      exact first-order Taylor (Hessian-vector product)

Each is scored by ``cos(x, g_now)`` and ``relerr = ||x - g_now|| / ||g_now||``.
``lam_eff`` is ``lam`` for dc-asgd-c, ``lam0 / sqrt(ms + eps)`` for dc-asgd-a
with ``ms`` as it will be after this push's MeanSquare update (computed on a
copy), and, for the rules without compensation, the dc-asgd-c form with the
configured ``lam`` (the record's ``lam_form`` says which).  The estimates use
the gradient as pushed, before any server-side ``clip_norm``.

The probe never changes the training trajectory: it restores the global
torch RNG, the shared FlatModel's parameters, gradients and buffers, and
never writes into the pushed gradient, the worker's weights or server state.

:func:`compensation_metrics` is the whole computation as one pure function,
so a Ray worker can call it where the push happens; :func:`taylor_terms` and
:func:`estimate_metrics` are its model-free halves (tested on a quadratic).
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Callable

import torch
from torch.func import functional_call

from ..compute.flat import FlatModel
from ..compute.objectives import Loss, cross_entropy
from ..core.rules import Rule, State
from ..compute.worker import seed_dropout

ESTIMATES = ("delayed", "dc", "taylor")
RECORD_FIELDS = ("version", "worker", "staleness", "delta_norm", "cos_delayed", "cos_dc", "cos_taylor",
                 "relerr_delayed", "relerr_dc", "relerr_taylor", "epoch")


# ---------------------------------------------------------------- model-free maths


def taylor_terms(loss_fn: Callable[[torch.Tensor], torch.Tensor], w_bak: torch.Tensor,
                 w_now: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(g(w_bak), g(w_now), H(w_bak) (w_now - w_bak))`` for a scalar ``loss_fn`` of a flat vector.

    The Hessian-vector product is a double backward: ``d/dw (g(w) . v)`` at
    ``w_bak``, with ``v`` held constant.  Inputs are not modified.
    """
    v = (w_now - w_bak).detach()
    wb = w_bak.detach().clone().requires_grad_(True)
    (g_bak,) = torch.autograd.grad(loss_fn(wb), wb, create_graph=True)
    (hvp,) = torch.autograd.grad(g_bak, wb, grad_outputs=v, allow_unused=True)
    if hvp is None:                       # loss linear in w: zero Hessian
        hvp = torch.zeros_like(wb)
    wn = w_now.detach().clone().requires_grad_(True)
    (g_now,) = torch.autograd.grad(loss_fn(wn), wn)
    return g_bak.detach(), g_now.detach(), hvp.detach()


def dc_estimate(g: torch.Tensor, w_bak: torch.Tensor, w_now: torch.Tensor,
                lam_eff: float | torch.Tensor) -> torch.Tensor:
    """``g + lam_eff * g*g*(w_now - w_bak)`` (a new tensor)."""
    return g + lam_eff * g * g * (w_now - w_bak)


def _cos_relerr(x: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    x, target = x.double(), target.double()
    t_norm = float(target.norm())
    x_norm = float(x.norm())
    cos = float(x @ target) / (x_norm * t_norm) if x_norm > 0 and t_norm > 0 else math.nan
    relerr = float((x - target).norm()) / t_norm if t_norm > 0 else math.nan
    return cos, relerr


def estimate_metrics(g_bak: torch.Tensor, g_now: torch.Tensor, hvp: torch.Tensor, w_bak: torch.Tensor,
                     w_now: torch.Tensor, lam_eff: float | torch.Tensor) -> dict[str, float]:
    """Cosine and relative error against ``g_now`` of the delayed, DC and Taylor estimates.

    Also ``delta_norm = ||w_now - w_bak||`` and ``grad_norm = ||g_now||``.
    """
    estimates = {"delayed": g_bak, "dc": dc_estimate(g_bak, w_bak, w_now, lam_eff), "taylor": g_bak + hvp}
    out = {"delta_norm": float((w_now - w_bak).double().norm()), "grad_norm": float(g_now.double().norm())}
    for name, x in estimates.items():
        out[f"cos_{name}"], out[f"relerr_{name}"] = _cos_relerr(x, g_now)
    return out


# ---------------------------------------------------------------- the model's loss


def model_loss_fn(flat: FlatModel, x: torch.Tensor, y: torch.Tensor, key: int, loss_fn: Loss = cross_entropy
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The run's loss (mean cross-entropy by default) on (x, y) as a function of the flat weights,
    dropout seeded by ``key``.

    Mirrors :func:`dcasgd.compute.worker.compute_gradient` (train mode, ``seed_dropout(key)``
    right before the forward).  Buffers are the module's current ones, passed
    as clones so BatchNorm's running-statistics update never reaches the model.
    """
    named = [(name, p.shape) for name, p in flat.module.named_parameters() if p.requires_grad]
    sizes = flat.tensor_sizes

    def loss_at(w: torch.Tensor) -> torch.Tensor:
        tensors = {name: chunk.view(shape) for (name, shape), chunk in zip(named, torch.split(w, sizes))}
        tensors.update({name: b.clone() for name, b in flat.module.named_buffers()})
        seed_dropout(key, flat.params.device)
        return loss_fn(functional_call(flat.module, tensors, (x,)), y)

    return loss_at


def compensation_metrics(flat: FlatModel, weights_bak: torch.Tensor, weights_now: torch.Tensor,
                         buffers: torch.Tensor | None, x: torch.Tensor, y: torch.Tensor, key: int,
                         grad_bak: torch.Tensor, lam_eff: float | torch.Tensor,
                         loss_fn: Loss = cross_entropy) -> dict[str, float]:
    """Score the delayed, DC and Taylor estimates of ``g(weights_now)`` for one push.

    ``grad_bak`` is the pushed gradient ``g(weights_bak)`` (used as is for all
    three estimates); the gradient at ``weights_now`` uses the same batch,
    dropout ``key`` and BatchNorm ``buffers``.  Returns :func:`estimate_metrics`
    plus ``recompute_err``: ``||g(weights_bak) recomputed - grad_bak|| / ||grad_bak||``
    (about 1e-7 when batch, key and buffers really match the push).

    Leaves ``flat`` (parameters, gradients, buffers, train/eval mode), the global
    torch RNG and every argument as they were.
    """
    saved = (flat.params.clone(), flat.grads.clone(), flat.buffers.clone(),
             {name: b.clone() for name, b in flat.module.named_buffers()}, flat.module.training)
    try:
        with torch.random.fork_rng():
            flat.load(weights_bak, buffers)
            flat.module.train()
            g_bak, g_now, hvp = taylor_terms(model_loss_fn(flat, x, y, key, loss_fn), weights_bak, weights_now)
    finally:
        params, grads, flat_buffers, module_buffers, training = saved
        flat.params.copy_(params)
        flat.grads.copy_(grads)
        flat.buffers.copy_(flat_buffers)
        for name, b in flat.module.named_buffers():
            b.copy_(module_buffers[name])
        flat.module.train(training)
    out = estimate_metrics(grad_bak, g_now, hvp, weights_bak, weights_now, lam_eff)
    out["recompute_err"] = _cos_relerr(g_bak, grad_bak)[1]
    return out


def effective_lam(rule: Rule, state: State, grad: torch.Tensor, worker: int
                  ) -> tuple[float | torch.Tensor, float, str]:
    """``(lam_eff, lam, lam_form)`` the DC estimate uses for a push of ``grad`` by ``worker``.

    dc-asgd-a: ``lam0 / sqrt(m*ms + (1-m)*g*g + eps)`` on a copy of the MeanSquare row
    (the server's ``ms`` is not touched); any other rule: the dc-asgd-c form, ``lam``.
    """
    if rule.name == "dc-asgd-a":
        ms = state["mean_square"][worker if rule.per_worker_ms else 0]
        ms_after = ms.mul(rule.m).addcmul_(grad, grad, value=1.0 - rule.m)   # a new tensor
        return rule.lam0 / ms_after.add_(rule.eps).sqrt_(), rule.lam0, "dc-asgd-a"
    return rule.lam, rule.lam, "dc-asgd-c"


# ---------------------------------------------------------------- the simulator's probe


class CompensationProbe:
    """Every ``every``-th push, measure the delay compensation (see the module docstring).

    The simulator calls :meth:`maybe_record` just before the server applies a
    push.  Each record goes to ``sim.metrics`` as a ``probe`` line (and from
    there to TensorBoard, see :func:`dcasgd.tensorboard.open_metrics`) and to :attr:`records`.
    ``version`` is the server version this push creates (as on its ``update`` line).
    """

    def __init__(self, every: int) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"probe every must be an integer >= 1, got {every!r}")
        self.every = every
        self.pushes = 0
        self.records: list[dict[str, Any]] = []

    @classmethod
    def from_config(cls, cfg: Any) -> "CompensationProbe | None":
        """A probe for ``cfg.probe_every`` > 0, else None (probing off)."""
        every = getattr(cfg, "probe_every", 0)
        return cls(every) if every else None

    def maybe_record(self, sim: Any, w: Any, result: Any, batch: tuple[torch.Tensor, torch.Tensor, int]
                     ) -> dict[str, Any] | None:
        """Count this push; on every ``every``-th one compute, write and return its record."""
        self.pushes += 1
        if self.pushes % self.every:
            return None
        server = sim.server
        x, y, key = batch
        lam_eff, lam, form = effective_lam(server.rule, server.state, result.grad, w.index)
        metrics = compensation_metrics(sim.flat, w.weights, server.weights, w.buffers, x, y, key,
                                       result.grad, lam_eff, sim.loss_fn)
        record = {"version": server.version + 1, "worker": w.index,
                  "staleness": server.version - w.base_version, **metrics,
                  "lam": lam, "lam_form": form, "epoch": sim.epoch}
        self.records.append(record)
        sim.metrics.write("probe", **record)
        return record

    def state_dict(self) -> dict[str, Any]:
        """Push count and records, so a resumed run keeps probing every K-th push and its summary."""
        return {"every": self.every, "pushes": self.pushes, "records": [dict(r) for r in self.records]}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.pushes = int(sd["pushes"])
        self.records = [dict(r) for r in sd["records"]]

    def summary(self) -> dict[str, Any]:
        """For summary.json: counts, mean/median relative errors and median ratios to the delayed one.

        Statistics are over records with staleness >= 1 (at staleness 0 every
        estimate is exact); ``count`` counts all records, ``count_stale`` those used.
        """
        stale = [r for r in self.records if r["staleness"] >= 1]
        out: dict[str, Any] = {"every": self.every, "count": len(self.records), "count_stale": len(stale)}
        if self.records:
            out["lam"], out["lam_form"] = self.records[-1]["lam"], self.records[-1]["lam_form"]
        for name in ESTIMATES:
            values = [r[f"relerr_{name}"] for r in stale if math.isfinite(r[f"relerr_{name}"])]
            out[f"mean_relerr_{name}"] = statistics.fmean(values) if values else None
            out[f"median_relerr_{name}"] = statistics.median(values) if values else None
        base = out["median_relerr_delayed"]
        for name in ("dc", "taylor"):
            mine = out[f"median_relerr_{name}"]
            out[f"median_ratio_{name}_to_delayed"] = mine / base if mine is not None and base else None
        return out
