"""Compensation quality probe: how well does each rule guess the gradient it missed?

A push from worker m carries ``g = g(w_bak)``, the gradient at the weights it
pulled ``tau`` versions ago, while the server would like ``g_now = g(w_now)``.
Every K-th push the probe recomputes ``g_now`` on the *same* mini-batch with
the *same* dropout key and BatchNorm statistics (only the weights differ) and
scores five estimates of it.

Units
-----
Write [L] for the unit of the run's loss (nats for cross-entropy) and [w] for
that of the weights.  Then ``g``, ``g_now`` are [L/w]; ``v = w_now - w_bak``
is [w]; a Hessian ``H`` is [L/w^2]; ``g*g`` and the Fisher diagonal ``F`` are
[L^2/w^2], so the ``lam`` that turns them into a curvature is [1/L].  For
dc-asgd-a ``lam_eff = lam0 / sqrt(ms + eps)`` with ``ms`` in [L^2/w^2], so
``lam0`` is [1/w].  Every ``cos_*``, ``relerr_*``, ``lamscale_*``,
``fisher_to_gg`` and ``lamstar_taylor`` is a pure number; ``delta_norm =
||v||`` is [w] and ``grad_norm = ||g_now||`` [L/w].

The estimates
-------------
``*`` and ``⊙`` are elementwise, ``.`` the dot product over all P weights::

    delayed  g                                        what plain ASGD applies
    dc       g + lam_eff ⊙ (g*g*v)                     DC-ASGD: diag(lam g g^T) ~ H     O(P)
    rank1    g + lam_eff ⊙ (g (g.v))                   the paper's lam g g^T ~ H before it is diagonalised,
                                                       applied as g (g.v)               O(P)
    fisher   g + lam_eff ⊙ (F*v)                       F = (1/b) sum_i g_i*g_i, the empirical Fisher
                                                       diagonal of the b per-sample gradients g_i at w_bak
    taylor   g + H(w_bak) v                            exact first-order Taylor (Hessian-vector product)

``lam_eff`` is ``lam`` for dc-asgd-c, ``lam0 / sqrt(ms + eps)`` for dc-asgd-a
(a P-vector) with ``ms`` as it will be after this push's MeanSquare update
(computed on a copy), and, for the rules without compensation, the
dc-asgd-c form with the configured ``lam`` (the record's ``lam_form`` and
``lam`` say which; ``lam`` is ``lam0`` for dc-asgd-a).  The estimates use the
gradient ``g`` as pushed, before any server-side ``clip_norm``.

Each estimate ``x`` is scored by ``cos_x = cos(x, g_now)`` and
``relerr_x = ||x - g_now|| / ||g_now||`` (``relerr_delayed`` is the error
with no compensation at all).

The per-sample gradients come from ``torch.func``:
``vmap(grad(loss of one sample), randomness="different")`` over
``functional_call``, the run's ``loss_fn`` called on a batch of one, dropout
seeded by the push's key (each sample draws its own mask, so they are not the
masks of the batched forward).  BatchNorm cannot run on batch statistics
under ``vmap`` (and one sample has no batch statistics), so for a model with
BatchNorm the BatchNorm layers run in eval mode on the running statistics
the worker pushed with, the rest of the model (dropout) in train mode:
``fisher_mode`` is ``"eval"``, else ``"train"``; ``"unavailable"`` (NaN
Fisher fields, the reason in ``fisher_error``) when the model or loss cannot
run under ``vmap``.  ``fisher_grad_relerr = ||mean_i g_i - g|| / ||g||`` shows
how far those per-sample gradients are from the pushed one (about 1e-7 with
neither dropout nor BatchNorm).  ``fisher_to_gg = ||F|| / ||g*g||``: when the
per-sample gradients are dominated by noise (``g_i = m + e_i``, independent
zero-mean ``e_i``), ``E[F] = m*m + E[e*e]`` while ``E[g*g] = m*m + E[e*e]/b``,
so the ratio tends to the batch size ``b``: the mini-batch ``g*g`` the paper
uses is then about ``b`` times smaller than the Fisher it stands for.

Best scale lam*
---------------
Each compensated estimate has the form ``g + lam * h``, ``h`` the correction
direction with the scale factored out::

    dc       h = s ⊙ (g*g*v)        rank1   h = s ⊙ (g (g.v))
    fisher   h = F*v                taylor  h = H(w_bak) v

with ``s = lam_eff / lam`` (``s = 1`` for dc-asgd-c and the others; for
dc-asgd-a ``s = 1 / sqrt(ms + eps)``, the shape of the vector ``lam_eff``).
The least-squares best scalar, in float64, is::

    lam* = h . (g_now - g) / (h . h)
    relerr_x_at_lamstar = ||g + lam* h - g_now|| / ||g_now||

so ``lamstar_dc`` and ``lamstar_rank1`` are directly comparable with the
run's ``lam`` ([1/L]; for dc-asgd-a: the best scalar in place of ``lam0``,
[1/w]) and ``lamscale_dc = lamstar_dc / lam`` (likewise rank1) is the factor
by which the run's scale should have been multiplied (1: the run's scale was
the best one; NaN when ``lam = 0``).  ``lamstar_fisher`` is [1/L]: 1 per nat
when the empirical Fisher equals the Hessian (the Fisher information of a
log-likelihood is its expected Hessian; the empirical Fisher of a mini-batch
only approximates it).  ``lamstar_taylor`` is a pure number, 1 when ``H v`` is
exactly right (e.g. on a quadratic).  ``lam = 0`` is one of the candidates, so
``relerr_x_at_lamstar <= relerr_delayed`` always, and so is the run's own
scale for dc, rank1 and taylor (``relerr_x_at_lamstar <= relerr_x``; not for
fisher under dc-asgd-a, whose run scale is a vector): what remains at
``lam*`` is the error of the estimate's *shape* (its direction), the gap
between ``relerr_x`` and ``relerr_x_at_lamstar`` the error of its *scale*.  With
``v = 0`` (staleness 0) or ``h = 0``, ``lam*`` and the error at it are NaN.
Without the run's ``lam`` (a caller of :func:`compensation_metrics` that
passes only the vector ``lam_eff``) ``lamstar_dc``/``lamstar_rank1`` are NaN
and only ``lamscale_*`` is known; :func:`record_lamstar` recovers ``lam*`` as
``lamscale * lam`` from the record's ``lam``.

The probe never changes the training trajectory: it restores the global
torch RNG, the shared FlatModel's parameters, gradients, buffers and
train/eval modes, and never writes into the pushed gradient, the worker's
weights or server state.

:func:`compensation_metrics` is the whole computation as one pure function,
so a Ray worker can call it where the push happens; :func:`taylor_terms`,
:func:`per_sample_fisher` and :func:`estimate_metrics` are its parts
(:func:`estimate_metrics` is model-free, tested on a quadratic).
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ..compute.flat import FlatModel
from ..compute.objectives import Loss, cross_entropy
from .probe_records import SCALED, finite as _finite, percentiles, record_lamstar
from ..core.rules import Rule, State
from ..compute.worker import seed_dropout

ESTIMATES = ("delayed", "dc", "taylor", "rank1", "fisher")
RULE_SCALED = ("dc", "rank1")                          # of SCALED, those whose h carries the shape of the rule's lam_eff
RECORD_FIELDS = ("version", "worker", "staleness", "delta_norm", "cos_delayed", "cos_dc", "cos_taylor",
                 "relerr_delayed", "relerr_dc", "relerr_taylor", "epoch",
                 "cos_rank1", "relerr_rank1", "cos_fisher", "relerr_fisher", "fisher_to_gg", "fisher_mode",
                 "fisher_grad_relerr",
                 *(f"lamstar_{name}" for name in SCALED), *(f"lamscale_{name}" for name in RULE_SCALED),
                 *(f"relerr_{name}_at_lamstar" for name in SCALED))


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


def rank1_estimate(g: torch.Tensor, w_bak: torch.Tensor, w_now: torch.Tensor,
                   lam_eff: float | torch.Tensor) -> torch.Tensor:
    """``g + lam_eff * g (g . (w_now - w_bak))`` in float64: the outer product ``lam g g^T`` applied to the step."""
    g = g.double()
    lam = lam_eff.double() if isinstance(lam_eff, torch.Tensor) else float(lam_eff)
    return g + lam * g * (g @ (w_now.double() - w_bak.double()))


def best_scale(g: torch.Tensor, g_now: torch.Tensor, h: torch.Tensor) -> tuple[float, float]:
    """``(lam*, relerr at lam*)``: the least-squares scalar in ``g + lam h ~ g_now`` (float64).

    ``lam* = h . (g_now - g) / (h . h)``; ``relerr = ||g + lam* h - g_now|| / ||g_now||``.
    Both NaN when ``h`` is zero (or not finite); the error is NaN when ``g_now`` is zero.
    """
    g, g_now, h = g.double(), g_now.double(), h.double()
    hh = float(h @ h)
    if not (math.isfinite(hh) and hh > 0):
        return math.nan, math.nan
    lam = float(h @ (g_now - g)) / hh
    t_norm = float(g_now.norm())
    return lam, (float((g + lam * h - g_now).norm()) / t_norm if t_norm > 0 else math.nan)


def _cos_relerr(x: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    x, target = x.double(), target.double()
    t_norm = float(target.norm())
    x_norm = float(x.norm())
    cos = float(x @ target) / (x_norm * t_norm) if x_norm > 0 and t_norm > 0 else math.nan
    relerr = float((x - target).norm()) / t_norm if t_norm > 0 else math.nan
    return cos, relerr


def estimate_metrics(g_bak: torch.Tensor, g_now: torch.Tensor, hvp: torch.Tensor, w_bak: torch.Tensor,
                     w_now: torch.Tensor, lam_eff: float | torch.Tensor, fisher: torch.Tensor | None = None,
                     lam: float | None = None) -> dict[str, float]:
    """Scores against ``g_now`` of every estimate of the module docstring, and their best scales ``lam*``.

    ``hvp`` is ``H(w_bak) (w_now - w_bak)``, ``fisher`` the empirical Fisher
    diagonal ``F`` (None: the Fisher fields are NaN), ``lam`` the run's scalar
    ``lam`` (``lam0`` for dc-asgd-a), by default ``lam_eff`` when that is a
    number; with a vector ``lam_eff`` and no ``lam`` only ``lamscale_dc`` and
    ``lamscale_rank1`` are known and ``lamstar_dc``/``lamstar_rank1`` are NaN.
    Also ``delta_norm = ||w_now - w_bak||`` and ``grad_norm = ||g_now||``.
    """
    estimates = {"delayed": g_bak, "dc": dc_estimate(g_bak, w_bak, w_now, lam_eff), "taylor": g_bak + hvp,
                 "rank1": rank1_estimate(g_bak, w_bak, w_now, lam_eff)}
    g, v = g_bak.double(), w_now.double() - w_bak.double()
    lam_eff64 = lam_eff.double() if isinstance(lam_eff, torch.Tensor) else float(lam_eff)
    gg = g * g
    f64 = fisher.double() if fisher is not None else None
    if f64 is not None:
        estimates["fisher"] = g + lam_eff64 * f64 * v
    out = {"delta_norm": float(v.norm()), "grad_norm": float(g_now.double().norm())}
    for name in ESTIMATES:
        if name in estimates:
            out[f"cos_{name}"], out[f"relerr_{name}"] = _cos_relerr(estimates[name], g_now)
        else:
            out[f"cos_{name}"] = out[f"relerr_{name}"] = math.nan

    # lam*: the rule-shaped estimates (dc, rank1) as multiples of the run's lam, the others of 1
    if lam is None and not isinstance(lam_eff, torch.Tensor):
        lam = float(lam_eff)
    if lam is None:                       # vector lam_eff, lam unknown: fit a multiple of lam_eff itself
        shape, ref = lam_eff64, None
    elif lam == 0:                        # lam = 0 makes lam_eff = 0: its shape is unknown, fit lam * 1
        shape, ref = 1.0, None
    else:
        shape, ref = lam_eff64 / float(lam), float(lam)
    directions = {"dc": shape * gg * v, "rank1": shape * g * (g @ v), "taylor": hvp.double()}
    if f64 is not None:
        directions["fisher"] = f64 * v
    g_now64 = g_now.double()
    for name in SCALED:
        lam_star, err = best_scale(g, g_now64, directions[name]) if name in directions else (math.nan, math.nan)
        out[f"relerr_{name}_at_lamstar"] = err
        if name in RULE_SCALED:
            if lam is None:                          # fitted a multiple of lam_eff
                out[f"lamstar_{name}"], out[f"lamscale_{name}"] = math.nan, lam_star
            else:
                out[f"lamstar_{name}"] = lam_star
                out[f"lamscale_{name}"] = lam_star / ref if ref else math.nan
        else:
            out[f"lamstar_{name}"] = lam_star
    gg_norm = float(gg.norm())
    out["fisher_to_gg"] = float(f64.norm()) / gg_norm if f64 is not None and gg_norm > 0 else math.nan
    return out


# ---------------------------------------------------------------- the model's loss


def _named_shapes(flat: FlatModel) -> list[tuple[str, torch.Size]]:
    return [(name, p.shape) for name, p in flat.module.named_parameters() if p.requires_grad]


def model_loss_fn(flat: FlatModel, x: torch.Tensor, y: torch.Tensor, key: int, loss_fn: Loss = cross_entropy
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The run's loss (mean cross-entropy by default) on (x, y) as a function of the flat weights,
    dropout seeded by ``key``.

    Mirrors :func:`dcasgd.compute.worker.compute_gradient` (train mode, ``seed_dropout(key)``
    right before the forward).  Buffers are the module's current ones, passed
    as clones so BatchNorm's running-statistics update never reaches the model.
    """
    named = _named_shapes(flat)
    sizes = flat.tensor_sizes

    def loss_at(w: torch.Tensor) -> torch.Tensor:
        tensors = {name: chunk.view(shape) for (name, shape), chunk in zip(named, torch.split(w, sizes))}
        tensors.update({name: b.clone() for name, b in flat.module.named_buffers()})
        seed_dropout(key, flat.params.device)
        return loss_fn(functional_call(flat.module, tensors, (x,)), y)

    return loss_at


def _running_stat_norms(module: nn.Module) -> list[nn.Module]:
    """The submodules that would update running statistics in train mode (BatchNorm and kin)."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            or (isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats)]


def per_sample_fisher(flat: FlatModel, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, key: int,
                      loss_fn: Loss = cross_entropy, max_elements: int = 1 << 25
                      ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(F, mean_i g_i, fisher_mode)``: the empirical Fisher diagonal ``F = (1/b) sum_i g_i*g_i`` at ``w``.

    ``g_i`` is the gradient of ``loss_fn`` on sample i alone (``loss_fn`` called
    on a batch of one), from ``vmap(grad(...), randomness="different")`` over
    ``functional_call``, dropout seeded by ``key`` (one mask per sample).  The
    module's current buffers are used (as clones); BatchNorm layers run in eval
    mode on them (``fisher_mode`` ``"eval"``), everything else in train mode
    (``"train"`` when there is no BatchNorm).  The samples go through in chunks
    of at most ``max_elements`` per-sample gradient entries.  Float64 results,
    on ``w``'s device.  Leaves the module's modes and the global RNG as they were.
    """
    module = flat.module
    named, sizes = _named_shapes(flat), flat.tensor_sizes
    buffers = {name: b.clone() for name, b in module.named_buffers()}
    norms = _running_stat_norms(module)
    modes = [(m, m.training) for m in module.modules()]

    def one_loss(weights: torch.Tensor, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        tensors = {name: chunk.view(shape) for (name, shape), chunk in zip(named, torch.split(weights, sizes))}
        tensors.update(buffers)
        return loss_fn(functional_call(module, tensors, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    per_sample = vmap(grad(one_loss), in_dims=(None, 0, 0), randomness="different")
    w = w.detach()
    b = len(x)
    chunk = max(1, min(b, max_elements // max(1, w.numel())))
    sq = torch.zeros(w.numel(), dtype=torch.float64, device=w.device)
    total = torch.zeros_like(sq)
    try:
        with torch.random.fork_rng():
            module.train()
            for m in norms:
                m.eval()
            seed_dropout(key, w.device)
            for start in range(0, b, chunk):
                g_i = per_sample(w, x[start:start + chunk], y[start:start + chunk])
                sq += g_i.square().sum(0, dtype=torch.float64)
                total += g_i.sum(0, dtype=torch.float64)
    finally:
        for m, training in modes:
            m.training = training
    return sq / b, total / b, "eval" if norms else "train"


def compensation_metrics(flat: FlatModel, weights_bak: torch.Tensor, weights_now: torch.Tensor,
                         buffers: torch.Tensor | None, x: torch.Tensor, y: torch.Tensor, key: int,
                         grad_bak: torch.Tensor, lam_eff: float | torch.Tensor,
                         loss_fn: Loss = cross_entropy, lam: float | None = None) -> dict[str, Any]:
    """Score every estimate of ``g(weights_now)`` of the module docstring for one push.

    ``grad_bak`` is the pushed gradient ``g(weights_bak)`` (used as is for every
    estimate); the gradient at ``weights_now`` uses the same batch, dropout
    ``key`` and BatchNorm ``buffers``; the per-sample gradients of the Fisher
    diagonal are taken at ``weights_bak`` (see :func:`per_sample_fisher`).
    ``lam`` is the run's scalar ``lam`` (``lam0`` for dc-asgd-a), needed for
    ``lamstar_dc``/``lamstar_rank1`` when ``lam_eff`` is a vector.  Returns
    :func:`estimate_metrics` plus ``recompute_err``: ``||g(weights_bak)
    recomputed - grad_bak|| / ||grad_bak||`` (about 1e-7 when batch, key and
    buffers really match the push), ``fisher_mode`` and ``fisher_grad_relerr``
    (and ``fisher_error`` when the Fisher diagonal could not be computed).

    Leaves ``flat`` (parameters, gradients, buffers, train/eval mode), the global
    torch RNG and every argument as they were.
    """
    saved = (flat.params.clone(), flat.grads.clone(), flat.buffers.clone(),
             {name: b.clone() for name, b in flat.module.named_buffers()},
             [(m, m.training) for m in flat.module.modules()])
    fisher, fisher_extra = None, {}
    try:
        with torch.random.fork_rng():
            flat.load(weights_bak, buffers)
            flat.module.train()
            g_bak, g_now, hvp = taylor_terms(model_loss_fn(flat, x, y, key, loss_fn), weights_bak, weights_now)
            try:
                fisher, g_mean, mode = per_sample_fisher(flat, weights_bak, x, y, key, loss_fn)
                fisher_extra = {"fisher_mode": mode, "fisher_grad_relerr": _cos_relerr(g_mean, grad_bak)[1]}
            except (RuntimeError, NotImplementedError) as exc:    # a model or loss that vmap cannot run
                fisher_extra = {"fisher_mode": "unavailable", "fisher_grad_relerr": math.nan,
                                "fisher_error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    finally:
        params, grads, flat_buffers, module_buffers, modes = saved
        flat.params.copy_(params)
        flat.grads.copy_(grads)
        flat.buffers.copy_(flat_buffers)
        for name, b in flat.module.named_buffers():
            b.copy_(module_buffers[name])
        for m, training in modes:
            m.training = training
    out: dict[str, Any] = estimate_metrics(grad_bak, g_now, hvp, weights_bak, weights_now, lam_eff, fisher, lam)
    out["recompute_err"] = _cos_relerr(g_bak, grad_bak)[1]
    out.update(fisher_extra)
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


# ---------------------------------------------------------------- statistics of the records


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# ---------------------------------------------------------------- the simulator's probe


class CompensationProbe:
    """Every ``every``-th push, measure the delay compensation (see the module docstring).

    The simulator calls :meth:`maybe_record` just before the server applies a
    push.  Each record goes to ``sim.metrics`` as a ``probe`` line (and from
    there to TensorBoard, see :func:`dcasgd.io.tensorboard.open_metrics`) and to :attr:`records`.
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
                                       result.grad, lam_eff, sim.loss_fn, lam=lam)
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
        """For summary.json: counts, relative errors, ratios to the delayed one, ``lam*`` distributions.

        Statistics are over records with staleness >= 1 (at staleness 0 every
        estimate is exact and ``lam*`` undefined) and finite values; a record
        without a field (one written before it existed) is skipped for it.
        ``count`` counts all records, ``count_stale`` those used.  Keys (every
        one always present, None without data):

        - ``mean_relerr_X``, ``median_relerr_X`` for X in delayed, dc, taylor, rank1, fisher;
          ``median_ratio_X_to_delayed`` (ratio of the medians) for the four compensated ones;
        - ``lamstar_X`` for X in dc, rank1, fisher, taylor: ``{count, p10, p25, median, p75, p90}``
          of ``lam*`` (:func:`record_lamstar`), ``median_relerr_X_at_lamstar`` and
          ``median_ratio_X_at_lamstar_to_delayed``; ``median_lamscale_dc``, ``median_lamscale_rank1``;
        - ``median_fisher_to_gg``, ``median_fisher_grad_relerr``, ``fisher_mode`` (the modes seen,
          sorted and comma-separated).
        """
        stale = [r for r in self.records if r["staleness"] >= 1]
        out: dict[str, Any] = {"every": self.every, "count": len(self.records), "count_stale": len(stale)}
        if self.records:
            out["lam"], out["lam_form"] = self.records[-1]["lam"], self.records[-1]["lam_form"]

        def values(key: str) -> list[float]:
            return [float(r[key]) for r in stale if _finite(r.get(key))]

        for name in ESTIMATES:
            vals = values(f"relerr_{name}")
            out[f"mean_relerr_{name}"] = statistics.fmean(vals) if vals else None
            out[f"median_relerr_{name}"] = _median(vals)
        base = out["median_relerr_delayed"]

        def ratio(value: float | None) -> float | None:
            return value / base if value is not None and base else None

        for name in ESTIMATES[1:]:
            out[f"median_ratio_{name}_to_delayed"] = ratio(out[f"median_relerr_{name}"])
        for name in SCALED:
            lam_stars = [v for v in (record_lamstar(r, name) for r in stale) if math.isfinite(v)]
            out[f"lamstar_{name}"] = percentiles(lam_stars)
            out[f"median_relerr_{name}_at_lamstar"] = _median(values(f"relerr_{name}_at_lamstar"))
            out[f"median_ratio_{name}_at_lamstar_to_delayed"] = ratio(out[f"median_relerr_{name}_at_lamstar"])
        for name in RULE_SCALED:
            out[f"median_lamscale_{name}"] = _median(values(f"lamscale_{name}"))
        out["median_fisher_to_gg"] = _median(values("fisher_to_gg"))
        out["median_fisher_grad_relerr"] = _median(values("fisher_grad_relerr"))
        modes = sorted({str(r["fisher_mode"]) for r in self.records if r.get("fisher_mode") is not None})
        out["fisher_mode"] = ", ".join(modes) if modes else None
        return out
