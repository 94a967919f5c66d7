"""FPN: shapes/strides (odd sizes too), hand-computed top-down sums, gradients, torchvision cross-check."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mrcnn_ref.gradcheck import numerical_gradient, rel_error
from mrcnn_ref.model.fpn import FPN


def _features(rng, chans, sizes, n=1):
    return [rng.standard_normal((n, c, h, w)) for c, (h, w) in zip(chans, sizes)]


@given(h=st.integers(8, 40), w=st.integers(8, 40))
@settings(max_examples=10)
def test_shapes_and_strides_odd_sizes(h, w):
    """C_l of size ceil(H / 2^l): P2..P5 keep those sizes, P6 halves P5 (rounding up)."""
    fpn = FPN([2, 3, 4, 5], 3, rng=0, dtype=np.float64)
    sizes = [(-(-h // 2 ** k), -(-w // 2 ** k)) for k in range(2, 6)]
    P = fpn(_features(np.random.default_rng(0), [2, 3, 4, 5], sizes))
    assert [p.shape[-2:] for p in P[:4]] == sizes
    assert P[4].shape[-2:] == (-(-sizes[3][0] // 2), -(-sizes[3][1] // 2))
    assert all(p.shape[:2] == (1, 3) for p in P)


def test_top_down_hand_computed():
    """1 channel, lateral = identity, output conv = identity kernel: P_l = M_l = C_l + up(M_{l+1})."""
    fpn = FPN([1, 1, 1, 1], 1, rng=0, dtype=np.float64)
    for lat, out in zip(fpn.lateral, fpn.output):
        lat.params["weight"][...] = 1.0
        out.params["weight"][...] = 0.0
        out.params["weight"][0, 0, 1, 1] = 1.0
    C5 = np.array([[7.0]]).reshape(1, 1, 1, 1)
    C4 = np.arange(4.0).reshape(1, 1, 2, 2)
    C3 = np.ones((1, 1, 3, 3))  # odd: nearest upsampling from 2x2 to 3x3
    C2 = np.zeros((1, 1, 5, 6))
    P2, P3, P4, P5, P6 = fpn([C2, C3, C4, C5])
    np.testing.assert_array_equal(P5, C5)
    np.testing.assert_array_equal(P4[0, 0], [[7, 8], [9, 10]])
    # 2 -> 3 nearest: source index floor(i * 2 / 3) = 0, 0, 1
    np.testing.assert_array_equal(P3[0, 0], [[8, 8, 9], [8, 8, 9], [10, 10, 11]])
    # 3 -> 5 rows: floor(i*3/5) = 0,0,1,1,2 ; 3 -> 6 cols: 0,0,1,1,2,2
    np.testing.assert_array_equal(P2[0, 0, :, 0], [8, 8, 8, 8, 10])
    np.testing.assert_array_equal(P2[0, 0, 0], [8, 8, 8, 8, 9, 9])
    np.testing.assert_array_equal(P6, C5)  # 1x1 -> 1x1


def test_gradients_inputs_and_params():
    rng = np.random.default_rng(0)
    fpn = FPN([2, 3, 4, 5], 3, rng=1, dtype=np.float64)
    C = _features(rng, [2, 3, 4, 5], [(7, 9), (4, 5), (2, 3), (1, 2)])
    P = fpn(C)
    dP = [rng.standard_normal(p.shape) for p in P]
    dC = fpn.backward(dP)
    grads = {k: v.copy() for k, v in fpn.named_grads().items()}

    def loss():
        out = fpn(C)
        fpn.zero_grad()
        return float(sum(np.sum(p * d) for p, d in zip(out, dP)))

    for i, c in enumerate(C):
        assert rel_error(dC[i], numerical_gradient(loss, c)) <= 1e-6, f"dC{i + 2}"
    for k, p in fpn.named_parameters().items():
        assert rel_error(grads[k], numerical_gradient(loss, p)) <= 1e-6, k


def test_backward_none_entries_equal_zeros():
    rng = np.random.default_rng(2)
    fpn = FPN([2, 2, 2, 2], 2, rng=1, dtype=np.float64)
    C = _features(rng, [2] * 4, [(8, 8), (4, 4), (2, 2), (1, 1)])
    P = fpn(C)
    dP = [rng.standard_normal(p.shape) for p in P]
    a = fpn.backward([dP[0], None, dP[2], None, None])
    fpn.zero_grad()
    fpn(C)
    b = fpn.backward([dP[0], np.zeros_like(P[1]), dP[2], np.zeros_like(P[3]), np.zeros_like(P[4])])
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_bad_input():
    fpn = FPN([2, 3, 4, 5], 3, rng=0)
    with pytest.raises(ValueError, match="FPN.*list of 4"):
        fpn([np.zeros((1, 2, 4, 4), np.float32)])
    C = [np.zeros((1, c, 4, 4), np.float32) for c in (2, 3, 9, 5)]
    with pytest.raises(ValueError, match=r"Conv2d\(4->3, k=1\) 'lateral\.2': expected input with 4 channels"):
        fpn(C)


def test_matches_torchvision_fpn():
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
    rng = np.random.default_rng(3)
    chans = [2, 3, 4, 5]
    fpn = FPN(chans, 3, rng=4, dtype=np.float64)
    for v in fpn.named_parameters().values():  # non-zero biases too
        v[...] = rng.standard_normal(v.shape)
    tv = ops.FeaturePyramidNetwork(chans, 3, extra_blocks=LastLevelMaxPool()).double()
    with torch.no_grad():
        for i in range(4):
            tv.inner_blocks[i][0].weight.copy_(torch.tensor(fpn.lateral[i].params["weight"]))
            tv.inner_blocks[i][0].bias.copy_(torch.tensor(fpn.lateral[i].params["bias"]))
            tv.layer_blocks[i][0].weight.copy_(torch.tensor(fpn.output[i].params["weight"]))
            tv.layer_blocks[i][0].bias.copy_(torch.tensor(fpn.output[i].params["bias"]))
    C = _features(rng, chans, [(9, 11), (5, 6), (3, 3), (2, 2)], n=2)
    tC = {f"c{i}": torch.tensor(c, requires_grad=True) for i, c in enumerate(C)}
    tout = list(tv(dict(tC)).values())
    P = fpn(C)
    dP = [rng.standard_normal(p.shape) for p in P]
    for p, t in zip(P, tout):
        np.testing.assert_allclose(p, t.detach().numpy(), rtol=0, atol=1e-10)
    torch.autograd.backward(tout, [torch.tensor(d) for d in dP])
    dC = fpn.backward(dP)
    for i in range(4):
        np.testing.assert_allclose(dC[i], tC[f"c{i}"].grad.numpy(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(fpn.lateral[i].grads["weight"], tv.inner_blocks[i][0].weight.grad.numpy(),
                                   rtol=0, atol=1e-10)
        np.testing.assert_allclose(fpn.output[i].grads["bias"], tv.layer_blocks[i][0].bias.grad.numpy(),
                                   rtol=0, atol=1e-10)
