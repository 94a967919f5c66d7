"""ResNet / ResNet-FPN: shapes, presets, full gradient check, torch functional cross-check, errors."""
import numpy as np
import pytest

from mrcnn_ref.gradcheck import numerical_gradient_sampled, rel_error
from mrcnn_ref.model.backbone import (RESNET50_CONFIG, BackboneConfig, ResNet, ResNetFPN, receptive_fields,
                                      resnet50_fpn, resnet_fpn_tiny)
from mrcnn_ref.nn.blocks import BasicBlock, Bottleneck
from mrcnn_ref.nn.checkpoint import load_checkpoint, save_checkpoint
from mrcnn_ref.nn.layers import Conv2d, FrozenBatchNorm2d, GroupNorm, Identity, MaxPool2d, ReLU
from mrcnn_ref.nn.module import Sequential


def test_tiny_shapes_and_strides():
    m = resnet_fpn_tiny(rng=0)
    x = np.zeros((2, 3, 128, 128), np.float32)
    P = m(x)
    assert [p.shape for p in P] == [(2, 64, 128 // s, 128 // s) for s in (4, 8, 16, 32, 64)]
    assert all(p.dtype == np.float32 for p in P)
    assert m.strides == [4, 8, 16, 32, 64] and m.out_channels == 64
    assert m.body.out_channels == [16, 32, 64, 128]
    C = m.body(x)
    assert [c.shape[1:] for c in C] == [(16, 32, 32), (32, 16, 16), (64, 8, 8), (128, 4, 4)]
    names = m.named_parameters()
    assert "body.stem.0.weight" in names and "fpn.lateral.3.weight" in names and "fpn.output.0.bias" in names
    assert isinstance(m.body.layer1[0], BasicBlock) and len(m.body.layer4) == 1


def test_resnet50_layout():
    m = resnet50_fpn(rng=0)
    assert m.body.out_channels == [256, 512, 1024, 2048]
    assert [len(s) for s in m.body.stages()] == [3, 4, 6, 3]
    assert isinstance(m.body.layer3[0], Bottleneck)
    assert m.body.layer2[0].branch[3].stride == (2, 2)  # stride on the 3x3 conv
    assert isinstance(m.body.stem[1], FrozenBatchNorm2d)
    # conv/linear weights of ResNet-50 without fc: 23,454,912 + frozen BN vectors (4 per BN channel)
    conv = sum(v.size for k, v in m.body.named_parameters().items() if v.ndim == 4)
    assert conv == 23_454_912
    fpn = sum(v.size for v in m.fpn.named_parameters().values())
    assert fpn == 3_344_384


def test_resnet50_param_count_matches_torchvision():
    pytest.importorskip("torch")
    bu = pytest.importorskip("torchvision.models.detection.backbone_utils")
    tv = bu.resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=5)
    n_tv = sum(p.numel() for p in tv.parameters()) + sum(b.numel() for b in tv.buffers())
    assert resnet50_fpn(rng=0).num_parameters() == n_tv


def test_config_roundtrip_and_seed():
    cfg = BackboneConfig.from_any(RESNET50_CONFIG.to_dict())
    assert cfg == RESNET50_CONFIG
    with pytest.raises(ValueError, match="unknown key"):
        BackboneConfig.from_any({"blocks": 3})
    a, b = resnet_fpn_tiny(rng=5), resnet_fpn_tiny(rng=np.random.default_rng(5))
    for k, v in a.named_parameters().items():
        np.testing.assert_array_equal(v, b.named_parameters()[k])
    assert resnet_fpn_tiny(rng=0, dtype=np.float64).dtype == np.float64


def test_checkpoint_roundtrip_same_outputs(tmp_path):
    m = resnet_fpn_tiny(rng=1)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    path = save_checkpoint(tmp_path / "bb.npz", m.named_parameters(), None, m.config.to_dict())
    ck = load_checkpoint(path, expected=m.named_parameters())
    m2 = ResNetFPN(ck["config"], rng=99)
    m2.load_parameters(ck["params"])
    for p, q in zip(m(x), m2(x)):
        np.testing.assert_array_equal(p, q)


def test_full_gradient_check_tiny_resnet_fpn():
    """Input and a sample of parameters from every part, loss = sum_l <P_l, dP_l>, float64."""
    m = resnet_fpn_tiny(rng=2, dtype=np.float64)
    rng = np.random.default_rng(0)
    for k, v in m.named_parameters().items():  # non-trivial norm affine and biases
        if v.ndim == 1:
            v[...] += 0.1 * rng.standard_normal(v.shape)
    x = rng.standard_normal((1, 3, 32, 32))
    P = m(x)
    dP = [rng.standard_normal(p.shape) for p in P]
    dx = m.backward(dP)
    grads = {k: v.copy() for k, v in m.named_grads().items()}

    def loss():
        out = m(x)
        m.zero_grad()
        return float(sum(np.sum(p * d) for p, d in zip(out, dP)))

    idx, num = numerical_gradient_sampled(loss, x, num_samples=20, rng=1)
    assert rel_error(dx.reshape(-1)[idx], num) <= 1e-6
    params = m.named_parameters()
    parts = ["body.stem.0.weight", "body.stem.1.weight", "body.layer1.0.branch.0.weight",
             "body.layer2.0.branch.4.bias", "body.layer2.0.shortcut.0.weight", "body.layer3.0.branch.3.weight",
             "body.layer4.0.branch.0.weight", "body.layer4.0.shortcut.1.weight",
             "fpn.lateral.0.weight", "fpn.lateral.3.bias", "fpn.output.1.weight", "fpn.output.3.bias"]
    for k in parts:
        idx, num = numerical_gradient_sampled(loss, params[k], num_samples=5, rng=2)
        err = rel_error(grads[k].reshape(-1)[idx], num)
        assert err <= 1e-6, (k, err)


def _torch_forward(torch, mod, x, tp, prefix=""):
    """An independent reference: the same network spelled with torch.nn.functional ops."""
    F = torch.nn.functional
    pre = prefix
    if isinstance(mod, Conv2d):
        return F.conv2d(x, tp[pre + "weight"], tp.get(pre + "bias"), stride=mod.stride, padding=mod.padding)
    if isinstance(mod, GroupNorm):
        return F.group_norm(x, mod.num_groups, tp[pre + "weight"], tp[pre + "bias"], eps=mod.eps)
    if isinstance(mod, ReLU):
        return F.relu(x)
    if isinstance(mod, MaxPool2d):
        return F.max_pool2d(x, mod.kernel_size, mod.stride, mod.padding)
    if isinstance(mod, Identity):
        return x
    if isinstance(mod, Sequential):
        for i, child in enumerate(mod):
            x = _torch_forward(torch, child, x, tp, f"{pre}{i}.")
        return x
    if isinstance(mod, (BasicBlock, Bottleneck)):
        return F.relu(_torch_forward(torch, mod.branch, x, tp, pre + "branch.")
                      + _torch_forward(torch, mod.shortcut, x, tp, pre + "shortcut."))
    raise TypeError(type(mod))


def test_matches_torch_functional():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    m = resnet_fpn_tiny(rng=3, dtype=np.float64)
    rng = np.random.default_rng(1)
    for k, v in m.named_parameters().items():
        if v.ndim == 1:
            v[...] += 0.1 * rng.standard_normal(v.shape)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in m.named_parameters().items()}
    x = rng.standard_normal((2, 3, 45, 38))  # odd sizes
    tx = torch.tensor(x, requires_grad=True)
    body = m.body
    h = _torch_forward(torch, body.stem, tx, tp, "body.stem.")
    C = []
    for i, stage in enumerate(body.stages()):
        h = _torch_forward(torch, stage, h, tp, f"body.layer{i + 1}.")
        C.append(h)
    lat = [F.conv2d(c, tp[f"fpn.lateral.{i}.weight"], tp[f"fpn.lateral.{i}.bias"]) for i, c in enumerate(C)]
    inner = lat[3]
    outs = [None] * 4
    outs[3] = F.conv2d(inner, tp["fpn.output.3.weight"], tp["fpn.output.3.bias"], padding=1)
    for i in (2, 1, 0):
        inner = lat[i] + F.interpolate(inner, size=lat[i].shape[-2:], mode="nearest")
        outs[i] = F.conv2d(inner, tp[f"fpn.output.{i}.weight"], tp[f"fpn.output.{i}.bias"], padding=1)
    tP = outs + [F.max_pool2d(outs[3], 1, 2, 0)]
    P = m(x)
    for p, t in zip(P, tP):
        assert p.shape == tuple(t.shape)
        np.testing.assert_allclose(p, t.detach().numpy(), rtol=0, atol=1e-10)
    dP = [rng.standard_normal(p.shape) for p in P]
    torch.autograd.backward(tP, [torch.tensor(d) for d in dP])
    dx = m.backward(dP)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=0, atol=1e-10)
    for k, g in m.named_grads().items():
        np.testing.assert_allclose(g, tp[k].grad.numpy(), rtol=0, atol=1e-10, err_msg=k)


def test_resnet_backward_none_and_accumulation():
    m = ResNet(rng=0, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32))
    C = m(x)
    d = [np.ones_like(c) for c in C]
    a = m.backward([d[0], None, None, d[3]])
    m.zero_grad()
    m(x)
    b = m.backward([d[0], np.zeros_like(C[1]), np.zeros_like(C[2]), d[3]])
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="4 gradients"):
        m(x); m.backward(d[:3])


def test_bad_input_names_layer():
    m = resnet_fpn_tiny(rng=0)
    with pytest.raises(ValueError, match=r"Conv2d\(3->16, k=7, s=2, p=3\) 'body\.stem\.0': expected input with 3 channels, got shape \(1, 4, 32, 32\)"):
        m(np.zeros((1, 4, 32, 32), np.float32))
    with pytest.raises(TypeError, match=r"'body\.stem\.0'.*float64"):
        m(np.zeros((1, 3, 32, 32)))
    with pytest.raises(ValueError, match=r"'body\.stem\.0'.*4-D"):
        m(np.zeros((3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="block must be"):
        ResNet(block="dense")


def test_receptive_fields_theory():
    rf = receptive_fields(resnet_fpn_tiny(rng=0))
    # stem: 7x7/2 -> 7; maxpool 3/2 -> 7 + 2*2 = 11 (jump 4); layer1 two 3x3 at jump 4 -> 27
    assert rf["C2"] == (27, 4)
    # layer2: 3x3/2 at jump 4 (+8, jump 8), 3x3 at jump 8 (+16) -> 51
    assert rf["C3"] == (51, 8)
    assert rf["C4"] == (99, 16) and rf["C5"] == (195, 32)
    assert [rf[f"P{l}"][1] for l in range(2, 7)] == [4, 8, 16, 32, 64]
    assert all(rf[f"P{l}"][0] >= rf["C5"][0] for l in range(2, 7))  # top-down brings in C5's context
