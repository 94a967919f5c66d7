"""SGD with momentum and weight decay, learning-rate schedules, gradient-norm clipping.

SGD (the update used to train Mask R-CNN), with PyTorch's momentum semantics::

    g   = grad + weight_decay * p          (only for parameters that get weight decay)
    buf = momentum * buf + g               (buf starts at 0, so the first buf is g)
    p  -= lr * buf                         (nesterov: p -= lr * (g + momentum * buf))

**Which parameters get weight decay.** Decay pulls weights towards 0; that is meant for the
weights of convolutions and linear layers. Biases and the scale/shift of normalisation layers
have no such role, so — as is common practice for detectors — they are excluded. The rule, by
name and shape:

* a parameter whose name is ``"bias"`` or ends in ``".bias"`` gets **no** decay;
* a parameter with ``ndim == 1`` (every bias and every norm ``weight``/``bias``/statistic) gets
  **no** decay;
* everything else (conv / linear weights, ``ndim >= 2``) gets ``weight_decay``.

Pass ``no_decay=callable(name, array) -> bool`` to change the rule.

Schedules are callables ``lr = sched(iteration)``: :class:`WarmupMultiStepLR` (linear warm-up,
then multiply by ``gamma`` at each milestone) and :class:`WarmupCosineLR`.
"""
from __future__ import annotations

import bisect
import math

import numpy as np

from ..backend import asnumpy, get_array_module, is_host

__all__ = ["SGD", "AdamW", "WarmupMultiStepLR", "WarmupCosineLR", "clip_grad_norm", "global_grad_norm",
           "default_no_decay"]


def default_no_decay(name: str, p) -> bool:
    """True for biases and 1-D parameters (norm layers): they get no weight decay."""
    return name == "bias" or name.endswith(".bias") or p.ndim == 1


class _Optimizer:
    """What SGD and AdamW share: the parameters, the weight-decay rule, the step counter, and the
    checks on the gradients and on a saved state (buffers named like the parameters)."""

    kind = "optimizer"
    buffer_names: tuple = ()

    def __init__(self, params: dict, weight_decay: float, no_decay=None):
        if not isinstance(params, dict) or not params:
            raise TypeError(f"{self.kind}: params must be a non-empty dict name -> array "
                            "(e.g. model.named_parameters())")
        self.params = params
        self.weight_decay = float(weight_decay)
        rule = no_decay or default_no_decay
        self._decays = {k: not rule(k, p) for k, p in params.items()}
        for b in self.buffer_names:
            setattr(self, b, {k: get_array_module(p).zeros_like(p) for k, p in params.items()})
        self.iteration = 0

    @property
    def decay(self) -> dict:
        """name -> the weight decay that parameter gets (``weight_decay`` or 0), from the current
        ``weight_decay``, so a loaded state's value takes effect."""
        return {k: (self.weight_decay if d else 0.0) for k, d in self._decays.items()}

    def _check_grads(self, grads: dict):
        if set(grads) != set(self.params):
            missing = sorted(set(self.params) - set(grads))[:5]
            extra = sorted(set(grads) - set(self.params))[:5]
            raise ValueError(f"{self.kind}.step: gradient names do not match the parameters "
                             f"(missing {missing}, unexpected {extra})")
        for k, p in self.params.items():
            if grads[k].shape != p.shape:
                raise ValueError(f"{self.kind}.step: gradient of {k!r} has shape "
                                 f"{tuple(grads[k].shape)}, parameter has {tuple(p.shape)}")

    def _hyper(self) -> dict:
        raise NotImplementedError

    def _set_hyper(self, hyper: dict):
        raise NotImplementedError

    def state_dict(self) -> dict:
        """``{"hyper": {...}, <buffer>: {name: array}, ...}`` (arrays are host copies)."""
        state = {"hyper": {**self._hyper(), "optimizer": self.kind, "iteration": self.iteration}}
        for b in self.buffer_names:
            state[b] = {k: np.array(asnumpy(v)) for k, v in getattr(self, b).items()}
        return state

    def load_state_dict(self, state: dict):
        """Restore hyper-parameters and buffers (names and shapes must match the parameters)."""
        where = f"{self.kind}.load_state_dict"
        try:
            hyper = state["hyper"]
            saved_kind = hyper.get("optimizer", "SGD")      # states saved before AdamW are SGD's
        except (KeyError, TypeError, AttributeError):
            raise ValueError(f"{where}: expected a dict with 'hyper' (from {self.kind}.state_dict())") from None
        if saved_kind != self.kind:
            raise ValueError(f"{where}: the state was saved by {saved_kind}, not {self.kind}; "
                             "resume with the optimizer the run was started with")
        missing = [b for b in self.buffer_names if not isinstance(state.get(b), dict)]
        if missing:
            raise ValueError(f"{where}: the state has no {missing} (from {self.kind}.state_dict())")
        bufs = {b: state[b] for b in self.buffer_names}
        for b, saved in bufs.items():
            if set(saved) != set(self.params):
                missing = sorted(set(self.params) - set(saved))[:5]
                extra = sorted(set(saved) - set(self.params))[:5]
                raise ValueError(f"{where}: {b} does not match the parameters "
                                 f"(missing {missing}, unexpected {extra})")
            for k, v in saved.items():
                if tuple(np.shape(v)) != tuple(self.params[k].shape):
                    raise ValueError(f"{where}: {b} {k!r} has shape {tuple(np.shape(v))}, "
                                     f"parameter has {tuple(self.params[k].shape)}")
        for b, saved in bufs.items():
            for k, v in saved.items():
                dst = getattr(self, b)[k]
                dst[...] = get_array_module(dst).asarray(v, dtype=dst.dtype)
        self._set_hyper(hyper)
        self.iteration = int(hyper.get("iteration", 0))


class SGD(_Optimizer):
    """Stochastic gradient descent with momentum, weight decay and optional Nesterov momentum.

    ``params``: ``dict[name, array]`` of the live parameter arrays (``model.named_parameters()``);
    they are updated in place by :meth:`step`, which takes the matching ``dict`` of gradients
    (``model.named_grads()``).
    """

    kind = "SGD"
    buffer_names = ("momentum_buffer",)

    def __init__(self, params: dict, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4,
                 nesterov: bool = False, no_decay=None):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: lr, momentum and weight_decay must be >= 0, got "
                             f"lr={lr}, momentum={momentum}, weight_decay={weight_decay}")
        if nesterov and momentum <= 0:
            raise ValueError("SGD: nesterov momentum needs momentum > 0")
        super().__init__(params, weight_decay, no_decay)
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def step(self, grads: dict, lr: float | None = None):
        """Apply one update in place. ``grads`` must have exactly the keys of ``params``."""
        self._check_grads(grads)
        lr = self.lr if lr is None else float(lr)
        m = self.momentum
        for k, p in self.params.items():
            g = grads[k]
            if self._decays[k] and self.weight_decay:
                g = g + self.weight_decay * p
            if m:
                buf = self.momentum_buffer[k]
                buf *= m
                buf += g
                g = g + m * buf if self.nesterov else buf
            p -= (lr * g).astype(p.dtype, copy=False)
        self.iteration += 1

    def _hyper(self):
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "nesterov": self.nesterov}

    def _set_hyper(self, hyper):
        self.lr = float(hyper["lr"])
        self.momentum = float(hyper["momentum"])
        self.weight_decay = float(hyper["weight_decay"])
        self.nesterov = bool(hyper["nesterov"])


class AdamW(_Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), as ``torch.optim.AdamW``.

    Step ``t = 1, 2, ...`` for each parameter ``p`` with gradient ``g``::

        p -= lr * weight_decay * p                   (decoupled: not part of g; not for no-decay params)
        m  = beta1 * m + (1 - beta1) * g             (first moment; m, v start at 0)
        v  = beta2 * v + (1 - beta2) * g²            (second moment, elementwise)
        p -= lr * (m / (1 - beta1**t)) / (sqrt(v / (1 - beta2**t)) + eps)

    Each weight moves by about ``lr`` per step whatever the scale of its gradient (the first step
    is exactly ``lr · sign(g)`` up to ``eps``), so layers whose gradients are tiny — the deep
    parts of a network trained from scratch — learn as fast as the rest; SGD moves them by
    ``lr · |g|``. ``weight_decay`` here is a rate per unit of lr (0.05 shrinks a weight by
    ``lr · 0.05`` of itself per step), not an L2 term added to the gradient as in :class:`SGD`.
    """

    kind = "AdamW"
    buffer_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params: dict, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.05, no_decay=None):
        betas = tuple(betas) if isinstance(betas, (tuple, list)) else betas
        if (not isinstance(betas, tuple) or len(betas) != 2
                or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
            raise ValueError(f"AdamW: betas must be two numbers in [0, 1), got {betas!r}")
        if lr < 0 or weight_decay < 0 or eps <= 0:
            raise ValueError(f"AdamW: lr and weight_decay must be >= 0 and eps > 0, got "
                             f"lr={lr}, weight_decay={weight_decay}, eps={eps}")
        super().__init__(params, weight_decay, no_decay)
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)

    def step(self, grads: dict, lr: float | None = None):
        """Apply one update in place. ``grads`` must have exactly the keys of ``params``."""
        self._check_grads(grads)
        lr = self.lr if lr is None else float(lr)
        b1, b2 = self.betas
        t = self.iteration + 1
        step_size = lr / (1.0 - b1 ** t)
        inv_sqrt_c2 = 1.0 / math.sqrt(1.0 - b2 ** t)
        for k, p in self.params.items():
            g = grads[k]
            xp = get_array_module(p)
            m, v = self.exp_avg[k], self.exp_avg_sq[k]
            if self._decays[k] and self.weight_decay:
                p *= p.dtype.type(1.0 - lr * self.weight_decay)
            # the formulas of the docstring, in place: two temporaries per parameter instead of
            # seven (the same operations in the same order, so the same numbers)
            g_tmp = g * g                           # g², then (1 - beta1) g
            g_tmp *= 1.0 - b2
            v *= b2
            v += g_tmp
            xp.multiply(g, 1.0 - b1, out=g_tmp)
            m *= b1
            m += g_tmp
            step = xp.sqrt(v)                       # sqrt(v / (1 - beta2^t)) + eps, then the step
            step *= inv_sqrt_c2
            step += self.eps
            xp.divide(m, step, out=step)
            step *= step_size
            p -= step
        self.iteration = t

    def _hyper(self):
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay}

    def _set_hyper(self, hyper):
        self.lr = float(hyper["lr"])
        self.betas = (float(hyper["betas"][0]), float(hyper["betas"][1]))
        self.eps = float(hyper["eps"])
        self.weight_decay = float(hyper["weight_decay"])


def _warmup_factor(it: int, warmup_iters: int, warmup_factor: float) -> float:
    """Linear ramp from ``warmup_factor`` (iteration 0) to 1 (iteration ``warmup_iters``)."""
    if it >= warmup_iters:
        return 1.0
    alpha = it / warmup_iters
    return warmup_factor * (1.0 - alpha) + alpha


class WarmupMultiStepLR:
    """``lr(it) = base_lr · warm-up(it) · gamma ** (number of milestones <= it)``.

    Warm-up: linear from ``warmup_factor · base_lr`` at iteration 0 to ``base_lr`` at
    ``warmup_iters`` (the Mask R-CNN recipe uses 1/1000 over the first iterations).
    """

    def __init__(self, base_lr: float, warmup_iters: int = 0, warmup_factor: float = 1e-3,
                 milestones=(), gamma: float = 0.1):
        milestones = [int(m) for m in milestones]
        if milestones != sorted(milestones):
            raise ValueError(f"WarmupMultiStepLR: milestones must be increasing, got {milestones}")
        if warmup_iters < 0:
            raise ValueError(f"WarmupMultiStepLR: warmup_iters must be >= 0, got {warmup_iters}")
        self.base_lr = float(base_lr)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        self.milestones = milestones
        self.gamma = float(gamma)

    def __call__(self, iteration: int) -> float:
        it = int(iteration)
        steps = bisect.bisect_right(self.milestones, it)
        return self.base_lr * _warmup_factor(it, self.warmup_iters, self.warmup_factor) * self.gamma ** steps


class WarmupCosineLR:
    """Linear warm-up, then half a cosine from ``base_lr`` (it = 0) to ``min_lr`` (it = max_iters).

    ``lr(it) = warm-up(it) · (min_lr + (base_lr - min_lr) · (1 + cos(pi · it / max_iters)) / 2)``,
    constant at ``min_lr`` after ``max_iters``.
    """

    def __init__(self, base_lr: float, max_iters: int, warmup_iters: int = 0,
                 warmup_factor: float = 1e-3, min_lr: float = 0.0):
        if max_iters <= 0:
            raise ValueError(f"WarmupCosineLR: max_iters must be > 0, got {max_iters}")
        self.base_lr = float(base_lr)
        self.max_iters = int(max_iters)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        self.min_lr = float(min_lr)

    def __call__(self, iteration: int) -> float:
        it = int(iteration)
        t = min(it, self.max_iters) / self.max_iters
        cos = self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
        return cos * _warmup_factor(it, self.warmup_iters, self.warmup_factor)


def global_grad_norm(grads: dict) -> float:
    """``sqrt(sum_k ||g_k||²)`` over all gradients, as a float; for float32 gradients ``inf``/``nan``
    exactly when some entry is not finite, so one pass serves as the divergence check too (float64
    gradients beyond ~1e154 would also read ``inf``).

    Each ``||g_k||²`` is one BLAS dot product in the gradient's own dtype (no float64 copy of the
    gradients); a float32 dot that overflows is recomputed in float64, where the squares of
    finite float32 values cannot overflow. On a device the parts are added there, in float64 and
    in the same order, and read back once (the same number as on the host).
    """
    xp = get_array_module(*grads.values())
    if not is_host(xp):
        parts = [xp.vdot(g.reshape(-1), g.reshape(-1)).astype(np.float64) for g in grads.values()]
        sq = float(sum(parts))                                   # one device->host transfer
        if math.isfinite(sq):
            return math.sqrt(sq)
    sq = 0.0
    for g in grads.values():
        xp = get_array_module(g)
        flat = g.reshape(-1)
        part = float(xp.vdot(flat, flat))
        if not math.isfinite(part):
            f64 = flat.astype(np.float64)
            part = float(xp.vdot(f64, f64))
        sq += part
    return math.sqrt(sq) if math.isfinite(sq) else sq


def clip_grad_norm(grads: dict, max_norm: float, eps: float = 1e-6, total: float | None = None) -> float:
    """Scale all gradients in place so that their global L2 norm is at most ``max_norm``.

    ``total = sqrt(sum_k ||g_k||²)`` (:func:`global_grad_norm`, or pass it if already computed);
    if ``total > max_norm`` every gradient is multiplied by ``max_norm / (total + eps)`` (as
    ``torch.nn.utils.clip_grad_norm_``). Returns ``total`` (the norm *before* clipping) as a float.
    """
    if max_norm <= 0:
        raise ValueError(f"clip_grad_norm: max_norm must be > 0, got {max_norm}")
    if total is None:
        total = global_grad_norm(grads)
    coef = max_norm / (total + eps)
    if coef < 1.0:
        for g in grads.values():
            g *= g.dtype.type(coef)
    return total
