"""SGD (momentum, weight decay, nesterov), AdamW, schedules and gradient clipping."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from mrcnn_ref.nn.optim import (SGD, AdamW, WarmupCosineLR, WarmupMultiStepLR, clip_grad_norm, default_no_decay,
                                global_grad_norm)


def _params(rng):
    return {"conv.weight": rng.standard_normal((4, 3, 3, 3)),
            "conv.bias": rng.standard_normal(4),
            "gn.weight": rng.standard_normal(4),
            "fc.weight": rng.standard_normal((5, 4))}


def test_no_decay_rule():
    assert default_no_decay("layer1.0.conv1.bias", np.zeros(3))
    assert default_no_decay("bias", np.zeros(3))
    assert default_no_decay("layer1.0.gn1.weight", np.zeros(3))
    assert not default_no_decay("layer1.0.conv1.weight", np.zeros((3, 3, 1, 1)))
    assert not default_no_decay("fc.weight", np.zeros((3, 2)))


def test_sgd_hand_computed():
    p = {"w": np.array([[1.0, -2.0]]), "b": np.array([3.0])}
    opt = SGD(p, lr=0.1, momentum=0.5, weight_decay=0.01)
    g = {"w": np.array([[0.5, 0.5]]), "b": np.array([1.0])}
    opt.step(g)
    # w: g' = g + 0.01 w = [0.51, 0.48]; buf = g'; w -= 0.1 buf
    np.testing.assert_allclose(p["w"], [[1 - 0.051, -2 - 0.048]], rtol=0, atol=1e-15)
    np.testing.assert_allclose(p["b"], [3.0 - 0.1], atol=1e-15)  # no decay on the bias
    opt.step(g)
    # second step: buf = 0.5*[0.51,0.48] + (g + 0.01 w_new)
    w1 = np.array([1 - 0.051, -2 - 0.048])
    buf = 0.5 * np.array([0.51, 0.48]) + (np.array([0.5, 0.5]) + 0.01 * w1)
    np.testing.assert_allclose(p["w"], [w1 - 0.1 * buf], atol=1e-15)
    np.testing.assert_allclose(p["b"], [3.0 - 0.1 - 0.1 * (0.5 * 1 + 1)], atol=1e-15)


def _against_torch(make_ours, make_torch, seed, steps, lr0, drop_at):
    """Run our optimizer and torch's on the same parameters and gradients (weight decay on the
    ndim >= 2 arrays only, the lr cut to 0.3x from step ``drop_at``); compare the parameters."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    ours = _params(rng)
    tall = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in ours.items()}
    opt = make_ours(ours)
    topt = make_torch(torch, [[tall[k] for k in ours if ours[k].ndim > 1],
                              [tall[k] for k in ours if ours[k].ndim == 1]])
    for it in range(steps):
        grads = {k: rng.standard_normal(v.shape) for k, v in ours.items()}
        lr = lr0 * (0.3 if it >= drop_at else 1.0)
        for gr in topt.param_groups:
            gr["lr"] = lr
        for k, t in tall.items():
            t.grad = torch.tensor(grads[k])
        topt.step()
        opt.step(grads, lr=lr)
    for k in ours:
        np.testing.assert_allclose(ours[k], tall[k].detach().numpy(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_matches_torch(nesterov):
    _against_torch(lambda p: SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=nesterov),
                   lambda torch, groups: torch.optim.SGD(
                       [{"params": groups[0], "weight_decay": 1e-2}, {"params": groups[1], "weight_decay": 0.0}],
                       lr=0.05, momentum=0.9, nesterov=nesterov),
                   seed=0, steps=5, lr0=0.05, drop_at=3)


def test_sgd_no_decay_on_bias_and_norm_params():
    rng = np.random.default_rng(1)
    p = _params(rng)
    before = {k: v.copy() for k, v in p.items()}
    opt = SGD(p, lr=0.1, momentum=0.9, weight_decay=0.5)
    opt.step({k: np.zeros_like(v) for k, v in p.items()})
    for k in ("conv.bias", "gn.weight"):
        np.testing.assert_array_equal(p[k], before[k])
    for k in ("conv.weight", "fc.weight"):
        np.testing.assert_allclose(p[k], before[k] * (1 - 0.1 * 0.5))


@pytest.mark.parametrize("make, other", [
    (lambda p: SGD(p, lr=0.1), lambda p: SGD(p, lr=0.7, momentum=0.5)),
    (lambda p: AdamW(p, lr=0.01), lambda p: AdamW(p, lr=0.5, betas=(0.1, 0.2)))])
def test_state_dict_roundtrip_continues_identically(make, other):
    rng = np.random.default_rng(2)
    p1 = _params(rng)
    p2 = {k: v.copy() for k, v in p1.items()}
    o1 = make(p1)
    gs = [{k: rng.standard_normal(v.shape) for k, v in p1.items()} for _ in range(4)]
    o1.step(gs[0]); o1.step(gs[1])
    o2 = other(p2)                      # other hyper-parameters: the loaded ones must win
    for k in p2:
        p2[k][...] = p1[k]
    o2.load_state_dict(o1.state_dict())
    assert o2.state_dict()["hyper"] == o1.state_dict()["hyper"] and o2.iteration == 2
    o1.step(gs[2]); o2.step(gs[2])
    for k in p1:
        np.testing.assert_array_equal(p1[k], p2[k])


def test_a_state_is_refused_by_the_other_optimizer():
    p = _params(np.random.default_rng(4))
    with pytest.raises(ValueError, match="saved by AdamW, not SGD"):
        SGD(p, lr=0.1).load_state_dict(AdamW(p, lr=0.1).state_dict())
    with pytest.raises(ValueError, match="saved by SGD, not AdamW"):
        AdamW(p, lr=0.1).load_state_dict(SGD(p, lr=0.1).state_dict())


def test_sgd_bad_input():
    p = {"w": np.zeros((2, 2))}
    opt = SGD(p, lr=0.1)
    with pytest.raises(ValueError, match="missing"):
        opt.step({"v": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="shape"):
        opt.step({"w": np.zeros((2, 3))})
    with pytest.raises(TypeError, match="SGD"):
        SGD([np.zeros(2)], lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        SGD(p, lr=-1.0)


def test_sgd_float32_stays_float32():
    p = {"w": np.ones((3, 3), np.float32)}
    SGD(p, lr=0.1).step({"w": np.ones((3, 3), np.float32)})
    assert p["w"].dtype == np.float32


def test_warmup_multistep():
    s = WarmupMultiStepLR(0.02, warmup_iters=100, warmup_factor=0.001, milestones=(500, 800), gamma=0.1)
    assert s(0) == pytest.approx(0.02 * 0.001)
    assert s(50) == pytest.approx(0.02 * (0.001 * 0.5 + 0.5))
    assert s(100) == pytest.approx(0.02)
    assert s(499) == pytest.approx(0.02)
    assert s(500) == pytest.approx(0.002)
    assert s(799) == pytest.approx(0.002)
    assert s(800) == pytest.approx(0.0002)
    with pytest.raises(ValueError, match="increasing"):
        WarmupMultiStepLR(0.1, milestones=(10, 5))


@given(st.integers(0, 2000))
def test_warmup_multistep_monotone_in_warmup_and_bounded(it):
    s = WarmupMultiStepLR(1.0, warmup_iters=200, warmup_factor=0.01, milestones=(1000,), gamma=0.1)
    assert 0 < s(it) <= 1.0
    if it < 200:
        assert s(it) <= s(it + 1)


def test_warmup_cosine():
    s = WarmupCosineLR(0.1, max_iters=1000, warmup_iters=0, min_lr=0.001)
    assert s(0) == pytest.approx(0.1)
    assert s(500) == pytest.approx(0.001 + 0.099 * 0.5)
    assert s(1000) == pytest.approx(0.001)
    assert s(5000) == pytest.approx(0.001)
    w = WarmupCosineLR(0.1, max_iters=1000, warmup_iters=10, warmup_factor=0.1)
    assert w(0) == pytest.approx(0.01)
    assert w(5) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.005)) * (0.1 * 0.5 + 0.5))


def test_clip_grad_norm_hand():
    g = {"a": np.array([3.0]), "b": np.array([[4.0]])}
    total = clip_grad_norm(g, 1.0)
    assert total == pytest.approx(5.0)
    np.testing.assert_allclose(g["a"], [3.0 / (5.0 + 1e-6)])
    g = {"a": np.array([0.3]), "b": np.array([[0.4]])}
    assert clip_grad_norm(g, 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(g["a"], [0.3])  # below the threshold: untouched


@given(st.floats(0.01, 10.0), st.integers(0, 10_000))
def test_clip_grad_norm_matches_torch(max_norm, seed):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    g = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
    ts = [torch.zeros(3, 4, dtype=torch.float64, requires_grad=True),
          torch.zeros(5, dtype=torch.float64, requires_grad=True)]
    ts[0].grad = torch.tensor(g["a"].copy()); ts[1].grad = torch.tensor(g["b"].copy())
    tt = torch.nn.utils.clip_grad_norm_(ts, max_norm)
    total = clip_grad_norm(g, max_norm)
    assert total == pytest.approx(float(tt), rel=1e-12)
    np.testing.assert_allclose(g["a"], ts[0].grad.numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(g["b"], ts[1].grad.numpy(), rtol=0, atol=1e-10)


@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([1e-12, 1.0, 1e18, 1e30]))
def test_global_grad_norm_matches_float64_and_flags_non_finite(seed, scale):
    """The float32 BLAS norm agrees with a float64 reference (also where float32 squares would
    overflow), and is inf/nan exactly when an entry is."""
    rng = np.random.default_rng(seed)
    grads = {k: (rng.standard_normal(shape) * scale).astype(np.float32)
             for k, shape in (("a", (7, 5)), ("b", (300,)), ("c", (2, 3, 4, 4)))}
    ref = np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))
    assert global_grad_norm(grads) == pytest.approx(ref, rel=1e-5)
    grads["b"][int(rng.integers(300))] = rng.choice([np.inf, -np.inf, np.nan])
    assert not np.isfinite(global_grad_norm(grads))


# ---------------------------------------------------------------------------------------- AdamW
def test_adamw_hand_computed():
    p = {"w": np.array([[1.0, -2.0]]), "b": np.array([3.0])}
    opt = AdamW(p, lr=0.1, betas=(0.5, 0.75), eps=1e-8, weight_decay=0.2)
    g1 = {"w": np.array([[0.5, -4.0]]), "b": np.array([1.0])}
    opt.step(g1)
    # step 1: m/(1-b1) = g and sqrt(v/(1-b2)) = |g|, so the move is lr * sign(g) (up to eps);
    # the weight (not the bias) first shrinks by lr * wd = 0.02 of itself
    g = np.array([0.5, -4.0])
    np.testing.assert_allclose(p["w"], [np.array([1.0, -2.0]) * (1 - 0.02) - 0.1 * np.sign(g)],
                               rtol=0, atol=1e-8)
    w1 = np.array([1.0, -2.0]) * (1 - 0.02) - 0.1 * g / (np.abs(g) + 1e-8)     # exactly, with eps
    np.testing.assert_allclose(p["w"], [w1], rtol=0, atol=1e-15)
    np.testing.assert_allclose(p["b"], [3.0 - 0.1], rtol=0, atol=1e-8)
    g2 = {"w": np.array([[1.0, 2.0]]), "b": np.array([-1.0])}
    opt.step(g2)
    m = 0.5 * 0.5 * np.array([0.5, -4.0]) + 0.5 * np.array([1.0, 2.0])
    v = 0.75 * 0.25 * np.array([0.25, 16.0]) + 0.25 * np.array([1.0, 4.0])
    w2 = w1 * (1 - 0.02) - 0.1 * (m / (1 - 0.25)) / (np.sqrt(v / (1 - 0.75 ** 2)) + 1e-8)
    np.testing.assert_allclose(p["w"], [w2], rtol=0, atol=1e-12)
    mb, vb = 0.25 * 1.0 + 0.5 * -1.0, 0.75 * 0.25 + 0.25 * 1.0
    b1 = 3.0 - 0.1 * 1.0 / (1.0 + 1e-8)
    np.testing.assert_allclose(p["b"], [b1 - 0.1 * (mb / 0.75) / (np.sqrt(vb / (1 - 0.5625)) + 1e-8)],
                               rtol=0, atol=1e-12)


@given(st.integers(0, 2**31 - 1), st.floats(1e-3, 1e3))
def test_adamw_first_step_is_lr_times_sign_whatever_the_gradient_scale(seed, scale):
    rng = np.random.default_rng(seed)
    p = {"fc.weight": rng.standard_normal((3, 4)), "fc.bias": rng.standard_normal(3)}
    before = {k: v.copy() for k, v in p.items()}
    g = {k: scale * rng.standard_normal(v.shape) for k, v in p.items()}
    AdamW(p, lr=0.01, weight_decay=0.0).step(g)
    for k in p:
        moved = before[k] - p[k]
        np.testing.assert_allclose(moved, 0.01 * g[k] / (np.abs(g[k]) + 1e-8), rtol=1e-9, atol=1e-15)
        big = np.abs(g[k]) > 1e-3         # where eps is negligible: exactly lr in size
        np.testing.assert_allclose(moved[big], 0.01 * np.sign(g[k][big]), rtol=1e-5)


def test_adamw_matches_torch():
    _against_torch(lambda p: AdamW(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
                   lambda torch, groups: torch.optim.AdamW(
                       [{"params": groups[0], "weight_decay": 0.1}, {"params": groups[1], "weight_decay": 0.0}],
                       lr=0.01, betas=(0.8, 0.99), eps=1e-6),
                   seed=3, steps=6, lr0=0.01, drop_at=4)


def test_loaded_weight_decay_takes_effect():
    """The per-parameter decay follows weight_decay, also after load_state_dict changed it."""
    p = {"fc.weight": np.ones((2, 2)), "fc.bias": np.ones(2)}
    saved = AdamW({k: v.copy() for k, v in p.items()}, lr=0.1, weight_decay=0.5).state_dict()
    opt = AdamW(p, lr=0.1, weight_decay=0.0)
    opt.load_state_dict(saved)
    assert opt.decay == {"fc.weight": 0.5, "fc.bias": 0.0}
    opt.step({k: np.zeros_like(v) for k, v in p.items()})
    np.testing.assert_allclose(p["fc.weight"], 1 - 0.1 * 0.5)
    np.testing.assert_array_equal(p["fc.bias"], 1.0)


def test_adamw_minimises_a_badly_scaled_quadratic():
    """f(w) = sum(a_i w_i²) with curvatures a_i from 1e-4 to 1e2: every coordinate gets to ~0."""
    a = np.logspace(-4, 2, 7)
    p = {"w": np.ones((1, 7))}
    opt = AdamW(p, lr=0.05, weight_decay=0.0)
    sched = WarmupCosineLR(0.05, max_iters=2000)
    for it in range(2000):
        opt.step({"w": 2 * a * p["w"]}, lr=sched(it))
    assert np.abs(p["w"]).max() < 0.05


def test_adamw_bad_input_and_dtype():
    p = {"w": np.ones((2, 2), np.float32)}
    with pytest.raises(ValueError, match="betas"):
        AdamW(p, lr=0.1, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="eps"):
        AdamW(p, lr=0.1, eps=0.0)
    with pytest.raises(TypeError, match="AdamW"):
        AdamW([np.zeros(2)], lr=0.1)
    opt = AdamW(p, lr=0.1)
    with pytest.raises(ValueError, match="AdamW.step: gradient of 'w' has shape"):
        opt.step({"w": np.zeros((2, 3), np.float32)})
    opt.step({"w": np.ones((2, 2), np.float32)})
    assert p["w"].dtype == np.float32 and opt.exp_avg_sq["w"].dtype == np.float32
