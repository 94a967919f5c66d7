"""mrcnn_ref.nn: Module mechanics, every layer's gradients, weight sharing, clear errors."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mrcnn_ref.gradcheck import numerical_gradient, rel_error
from mrcnn_ref.nn.blocks import BasicBlock, Bottleneck, make_norm
from mrcnn_ref.nn.layers import (Conv2d, ConvTranspose2d, Flatten, FrozenBatchNorm2d, GroupNorm, Identity,
                                 Linear, MaxPool2d, ReLU)
from mrcnn_ref.nn.module import Module, ModuleList, Sequential

TOL = 1e-6


def check_layer(m, x, seed=0, params=True):
    """Gradient check of a Module on its input and on every parameter (float64). Returns errors."""
    rng = np.random.default_rng(seed)
    m.zero_grad()
    out = m(x)
    dout = rng.standard_normal(out.shape)
    dx = m.backward(dout)
    grads = {k: v.copy() for k, v in m.named_grads().items()}

    def loss():
        y = m(x)
        m.zero_grad()  # drop the cache this evaluation pushed (grads were copied above)
        return float(np.sum(y * dout))

    errs = {"x": rel_error(dx, numerical_gradient(loss, x))}
    if params:
        for prefix, mod in m.named_modules():
            for name, p in mod.params.items():
                k = f"{prefix}.{name}" if prefix else name
                if mod.requires_grad:
                    errs[k] = rel_error(grads[k], numerical_gradient(loss, p))
                else:  # frozen: no parameter gradient at all
                    errs[k] = float(np.abs(grads[k]).max())
    return errs


def _assert_small(errs):
    bad = {k: e for k, e in errs.items() if not e <= TOL}
    assert not bad, bad


# --------------------------------------------------------------------------- Module mechanics
class _Net(Module):
    def __init__(self):
        super().__init__()
        self.stem = Sequential(Conv2d(3, 4, 3, padding=1, rng=0), ReLU())
        self.heads = ModuleList([Conv2d(4, 2, 1, rng=1), Conv2d(4, 2, 1, bias=False, rng=2)])


def test_named_parameters_dotted_and_live():
    net = _Net()
    names = list(net.named_parameters())
    assert names == ["stem.0.weight", "stem.0.bias", "heads.0.weight", "heads.0.bias", "heads.1.weight"]
    assert list(net.named_grads()) == names
    p = net.named_parameters()
    assert p["stem.0.weight"] is net.stem[0].params["weight"]  # live arrays
    assert net.stem[0].path == "stem.0" and net.heads[1].path == "heads.1"
    assert net.num_parameters() == 4 * 3 * 9 + 4 + 2 * 4 + 2 + 2 * 4


def test_init_kaiming_fan_out_and_seeded():
    c = Conv2d(64, 128, 3, rng=np.random.default_rng(0))
    w = c.params["weight"]
    assert w.dtype == np.float32 and w.shape == (128, 64, 3, 3)
    assert abs(w.std() - np.sqrt(2 / (128 * 9))) < 0.01 * np.sqrt(2 / (128 * 9)) * 5
    assert np.all(c.params["bias"] == 0)
    c2 = Conv2d(64, 128, 3, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(w, c2.params["weight"])
    small = Linear(100, 10, rng=1, init_std=0.01)
    assert abs(small.params["weight"].std() - 0.01) < 0.002
    assert ConvTranspose2d(4, 6, 2, stride=2, rng=0).params["weight"].shape == (4, 6, 2, 2)


def test_load_parameters_and_errors():
    a, b = _Net(), _Net()
    for v in b.named_parameters().values():
        v[...] = 7
    live = a.named_parameters()["stem.0.weight"]
    a.load_parameters(b.named_parameters())
    assert live is a.named_parameters()["stem.0.weight"] and np.all(live == 7)
    p = dict(b.named_parameters())
    del p["heads.0.bias"]
    with pytest.raises(ValueError, match=r"missing.*heads\.0\.bias"):
        a.load_parameters(p)
    a.load_parameters(p, strict=False)
    with pytest.raises(ValueError, match=r"unexpected.*extra\.w"):
        a.load_parameters(dict(b.named_parameters(), **{"extra.w": np.zeros(2)}))
    bad = dict(b.named_parameters(), **{"stem.0.weight": np.zeros((4, 3, 5, 5))})
    with pytest.raises(ValueError, match=r"shape mismatch.*stem\.0\.weight.*\(4, 3, 3, 3\).*\(4, 3, 5, 5\)"):
        a.load_parameters(bad, strict=False)


def test_astype_and_zero_grad_and_stack_errors():
    net = _Net().astype(np.float64)
    assert all(v.dtype == np.float64 for v in net.named_parameters().values())
    assert all(v.dtype == np.float64 for v in net.named_grads().values())
    x = np.ones((1, 3, 5, 5))
    y = net.stem(x)
    net.stem.backward(np.ones_like(y))
    assert np.abs(net.named_grads()["stem.0.weight"]).sum() > 0
    net.stem(x)
    net.zero_grad()
    assert all(np.all(g == 0) for g in net.named_grads().values())
    with pytest.raises(RuntimeError, match=r"ReLU\(\) 'stem\.1'.*backward called more times than forward"):
        net.stem.backward(np.ones_like(y))
    with pytest.raises(TypeError, match="floating"):
        net.astype(np.int32)


def test_freeze_keeps_param_grads_zero_but_passes_dx():
    c = Conv2d(2, 2, 3, padding=1, rng=0, dtype=np.float64).freeze()
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4))
    dx = c.backward(np.ones_like(c(x)))
    assert np.abs(dx).sum() > 0 and np.all(c.grads["weight"] == 0)
    c.unfreeze()
    c.backward(np.ones_like(c(x)))
    assert np.abs(c.grads["weight"]).sum() > 0


# --------------------------------------------------------------------------- gradient checks
@given(cin=st.integers(1, 3), cout=st.integers(1, 3), k=st.integers(1, 3), s=st.integers(1, 2),
       p=st.integers(0, 1), hw=st.tuples(st.integers(3, 6), st.integers(3, 6)), bias=st.booleans(),
       seed=st.integers(0, 2**16))
@settings(max_examples=15)
def test_conv2d_gradients(cin, cout, k, s, p, hw, bias, seed):
    m = Conv2d(cin, cout, k, stride=s, padding=p, bias=bias, rng=seed, dtype=np.float64)
    x = np.random.default_rng(seed).standard_normal((2, cin) + hw)
    _assert_small(check_layer(m, x, seed))


@given(cin=st.integers(1, 3), cout=st.integers(1, 3), k=st.integers(1, 3), s=st.integers(1, 2),
       hw=st.tuples(st.integers(1, 4), st.integers(1, 4)), seed=st.integers(0, 2**16))
@settings(max_examples=10)
def test_conv_transpose2d_gradients(cin, cout, k, s, hw, seed):
    m = ConvTranspose2d(cin, cout, k, stride=s, rng=seed, dtype=np.float64)
    x = np.random.default_rng(seed).standard_normal((1, cin) + hw)
    _assert_small(check_layer(m, x, seed))


@given(fi=st.integers(1, 6), fo=st.integers(1, 6), n=st.integers(1, 4), seed=st.integers(0, 2**16))
@settings(max_examples=10)
def test_linear_gradients(fi, fo, n, seed):
    m = Linear(fi, fo, rng=seed, dtype=np.float64)
    _assert_small(check_layer(m, np.random.default_rng(seed).standard_normal((n, fi)), seed))


@given(shape=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)),
       seed=st.integers(0, 2**16))
@settings(max_examples=10)
def test_relu_and_flatten_gradients(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.1, 1.0, shape) * rng.choice([-1.0, 1.0], shape)  # away from the kink at 0
    _assert_small(check_layer(ReLU(), x, seed, params=False))
    _assert_small(check_layer(Sequential(ReLU(), Flatten()), x, seed, params=False))
    assert Flatten()(x).shape == (shape[0], int(np.prod(shape[1:])))


@given(k=st.integers(1, 3), s=st.integers(1, 2), p=st.integers(0, 1), hw=st.integers(3, 6),
       seed=st.integers(0, 2**16))
@settings(max_examples=10)
def test_maxpool_gradients(k, s, p, hw, seed):
    if p * 2 > k:
        p = 0
    rng = np.random.default_rng(seed)
    x = rng.permutation(2 * 2 * hw * hw).reshape(2, 2, hw, hw) * 0.1  # distinct values: no ties
    _assert_small(check_layer(MaxPool2d(k, stride=s, padding=p), x.astype(np.float64), seed, params=False))


@given(g=st.sampled_from([1, 2, 4]), hw=st.integers(1, 4), seed=st.integers(0, 2**16))
@settings(max_examples=10)
def test_groupnorm_gradients(g, hw, seed):
    m = GroupNorm(g, 4, dtype=np.float64)
    rng = np.random.default_rng(seed)
    m.params["weight"][...] = rng.standard_normal(4)
    m.params["bias"][...] = rng.standard_normal(4)
    x = rng.standard_normal((2, 4, hw, hw + 1))
    _assert_small(check_layer(m, x, seed))


def test_frozen_bn_gradients_and_frozen():
    rng = np.random.default_rng(0)
    m = FrozenBatchNorm2d(3, dtype=np.float64)
    for k in m.params:
        m.params[k][...] = rng.uniform(0.5, 2.0, 3)
    x = rng.standard_normal((2, 3, 4, 4))
    y = m(x)
    ref = ((x - m.params["running_mean"][:, None, None]) / np.sqrt(m.params["running_var"][:, None, None] + 1e-5)
           * m.params["weight"][:, None, None] + m.params["bias"][:, None, None])
    np.testing.assert_allclose(y, ref, rtol=1e-12)
    m.zero_grad()
    _assert_small(check_layer(m, x, params=False))
    assert all(np.all(g == 0) for g in m.named_grads().values())  # frozen
    m.unfreeze()
    errs = check_layer(m, x)
    _assert_small({k: errs[k] for k in ("x", "weight", "bias")})


@pytest.mark.parametrize("norm", ["gn", "frozen_bn", "none"])
@pytest.mark.parametrize("stride,cin,cout", [(1, 4, 4), (2, 4, 6)])
def test_basic_block_gradients(norm, stride, cin, cout):
    rng = np.random.default_rng(stride + cin)
    m = BasicBlock(cin, cout, stride, norm=norm, gn_groups=2, rng=rng, dtype=np.float64)
    x = rng.standard_normal((1, cin, 5, 6))
    _assert_small(check_layer(m, x))
    if stride == 1 and cin == cout:
        assert isinstance(m.shortcut, Identity)


def test_bottleneck_gradients_and_shapes():
    rng = np.random.default_rng(3)
    m = Bottleneck(4, 2, 8, stride=2, norm="gn", gn_groups=2, rng=rng, dtype=np.float64)
    x = rng.standard_normal((1, 4, 6, 5))
    assert m(x).shape == (1, 8, 3, 3)
    m.zero_grad()
    _assert_small(check_layer(m, x))


def test_residual_block_hand_computed():
    """Identity shortcut, norm 'none', weights zero -> out = relu(0 + x) = relu(x)."""
    m = BasicBlock(2, 2, 1, norm="none", rng=0, dtype=np.float64)
    for v in m.named_parameters().values():
        v[...] = 0
    x = np.array([[-1.0, 2.0], [3.0, -4.0]]).reshape(1, 1, 2, 2).repeat(2, axis=1)
    np.testing.assert_array_equal(m(x), np.maximum(x, 0))
    np.testing.assert_array_equal(m.backward(np.ones_like(x)), (x > 0).astype(float))


def test_make_norm_groups():
    assert make_norm("gn", 256).num_groups == 32
    assert make_norm("gn", 16, gn_groups=32).num_groups == 16
    with pytest.raises(ValueError, match="unknown norm"):
        make_norm("bn", 4)


# --------------------------------------------------------------------------- weight sharing
LAYERS = {
    "conv": (lambda: Conv2d(2, 3, 3, padding=1, rng=0, dtype=np.float64), (1, 2, 4, 5)),
    "convT": (lambda: ConvTranspose2d(2, 3, 2, stride=2, rng=0, dtype=np.float64), (1, 2, 3, 3)),
    "linear": (lambda: Linear(4, 3, rng=0, dtype=np.float64), (2, 4)),
    "relu": (ReLU, (1, 2, 3, 3)),
    "maxpool": (lambda: MaxPool2d(2), (1, 2, 4, 4)),
    "gn": (lambda: GroupNorm(2, 4, dtype=np.float64), (2, 4, 3, 3)),
    "frozen_bn": (lambda: FrozenBatchNorm2d(2, dtype=np.float64).unfreeze(), (1, 2, 3, 3)),
    "flatten": (Flatten, (2, 2, 3, 3)),
    "seq": (lambda: Sequential(Conv2d(2, 2, 3, padding=1, rng=0, dtype=np.float64), ReLU(),
                               Conv2d(2, 1, 1, rng=1, dtype=np.float64)), (1, 2, 4, 4)),
    "basic": (lambda: BasicBlock(2, 4, 2, gn_groups=2, rng=0, dtype=np.float64), (1, 2, 5, 5)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_weight_sharing_accumulates_like_the_sum(name):
    make, shape = LAYERS[name]
    rng = np.random.default_rng(1)
    x1, x2 = rng.standard_normal(shape), rng.standard_normal(shape)
    m = make()
    y1, y2 = m(x1), m(x2)
    d1, d2 = rng.standard_normal(y1.shape), rng.standard_normal(y2.shape)
    dx2 = m.backward(d2)  # reverse order of the forward calls
    dx1 = m.backward(d1)
    shared = {k: v.copy() for k, v in m.named_grads().items()}
    m.zero_grad()
    m(x1); e1 = m.backward(d1); g1 = {k: v.copy() for k, v in m.named_grads().items()}
    m.zero_grad()
    m(x2); e2 = m.backward(d2); g2 = {k: v.copy() for k, v in m.named_grads().items()}
    np.testing.assert_allclose(dx1, e1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx2, e2, rtol=1e-12, atol=1e-12)
    for k in shared:
        np.testing.assert_allclose(shared[k], g1[k] + g2[k], rtol=1e-12, atol=1e-12)
    if name in ("conv", "linear", "gn", "basic"):
        assert any(np.abs(g).sum() > 0 for g in shared.values())


# --------------------------------------------------------------------------- errors name the layer
class _Stem(Module):
    def __init__(self):
        super().__init__()
        self.stem = Module()
        self.stem.conv = Conv2d(3, 16, 3, rng=0)


def test_channel_mismatch_names_layer():
    net = _Stem()
    with pytest.raises(ValueError) as e:
        net.stem.conv(np.zeros((1, 4, 32, 32), np.float32))
    assert str(e.value) == ("Conv2d(3->16, k=3) 'stem.conv': expected input with 3 channels, "
                            "got shape (1, 4, 32, 32)")


@pytest.mark.parametrize("layer,x,exc,pattern", [
    (lambda: Conv2d(3, 4, 3), np.zeros((3, 8, 8), np.float32), ValueError, r"Conv2d\(3->4, k=3\).*4-D input"),
    (lambda: Conv2d(3, 4, 5, padding=1), np.zeros((1, 3, 2, 2), np.float32), ValueError,
     r"Conv2d.*kernel \(5, 5\) is larger than the padded input \(4, 4\)"),
    (lambda: Conv2d(3, 4, 3), np.zeros((1, 3, 8, 8), np.int64), TypeError, r"Conv2d.*floating-point"),
    (lambda: Conv2d(3, 4, 3), np.zeros((1, 3, 8, 8), np.float64), TypeError, r"Conv2d.*float64.*float32"),
    (lambda: Conv2d(3, 4, 3), [[1.0]], TypeError, r"Conv2d.*array"),
    (lambda: ConvTranspose2d(3, 4, 2), np.zeros((1, 2, 4, 4), np.float32), ValueError, r"ConvTranspose2d.*3 channels"),
    (lambda: Linear(5, 2), np.zeros((2, 4), np.float32), ValueError, r"Linear\(5->2\).*5 features"),
    (lambda: Linear(5, 2), np.zeros((2, 5, 1), np.float32), ValueError, r"Linear.*2-D"),
    (lambda: MaxPool2d(3), np.zeros((1, 1, 2, 2), np.float32), ValueError, r"MaxPool2d.*larger than the padded"),
    (lambda: GroupNorm(2, 4), np.zeros((1, 6, 2, 2), np.float32), ValueError, r"GroupNorm\(2, 4\).*4 channels"),
    (lambda: FrozenBatchNorm2d(4), np.zeros((1, 4, 2), np.float32), ValueError, r"FrozenBatchNorm2d.*4-D"),
    (ReLU, np.zeros(3, np.int32), TypeError, r"ReLU.*floating"),
])
def test_bad_input_errors(layer, x, exc, pattern):
    with pytest.raises(exc, match=pattern):
        layer()(x)


def test_bad_constructor_args():
    with pytest.raises(ValueError, match="divisible"):
        GroupNorm(3, 4)
    with pytest.raises(TypeError, match="Conv2d.*kernel_size"):
        Conv2d(3, 4, 2.5)
    with pytest.raises(TypeError, match="Sequential"):
        Sequential(lambda x: x)
