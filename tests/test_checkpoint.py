"""Checkpoints: atomic writes, pickle-free loading, validation, optimizer + rng round trips."""
import json
import os

import numpy as np
import pytest

from mrcnn_ref.nn import checkpoint as ckpt_mod
from mrcnn_ref.nn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mrcnn_ref.nn.optim import SGD


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {"stem.conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
            "stem.conv.bias": np.zeros(4, np.float32),
            "fpn.output.0.weight": rng.standard_normal((2, 4, 3, 3)).astype(np.float32)}


def test_roundtrip_everything(tmp_path):
    p = _params()
    opt = SGD(p, lr=0.1)
    opt.step({k: np.ones_like(v) for k, v in p.items()})
    rng = np.random.default_rng(7)
    rng.standard_normal(3)
    path = save_checkpoint(tmp_path / "model", p, opt.state_dict(), config={"backbone": "tiny", "lr": 0.1},
                           rng_state=rng.bit_generator.state, extra={"iteration": 1})
    assert path.endswith(".npz") and os.path.exists(path)
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) == ({f"param/{k}" for k in p} | {f"optim/momentum_buffer/{k}" for k in p} | {"meta"})
        meta = json.loads(str(z["meta"][()]))
        assert meta["format"] == ckpt_mod.FORMAT_VERSION
    out = load_checkpoint(path, expected=p)
    for k in p:
        np.testing.assert_array_equal(out["params"][k], p[k])
        assert out["params"][k].dtype == np.float32
    assert out["config"] == {"backbone": "tiny", "lr": 0.1}
    assert out["extra"] == {"iteration": 1}
    opt2 = SGD(_params(1), lr=0.5)
    opt2.load_state_dict(out["optimizer_state"])
    assert opt2.lr == 0.1 and opt2.iteration == 1
    for k in p:
        np.testing.assert_array_equal(opt2.momentum_buffer[k], opt.momentum_buffer[k])
    # rng state round trip: same random numbers after restore
    expected_next = rng.standard_normal(5)
    r2 = np.random.default_rng(123)
    r2.bit_generator.state = out["rng_state"]
    np.testing.assert_array_equal(r2.standard_normal(5), expected_next)


def test_no_optimizer(tmp_path):
    path = save_checkpoint(tmp_path / "a.npz", _params(), None, {"x": 1})
    out = load_checkpoint(path)
    assert out["optimizer_state"] is None and out["rng_state"] is None and out["extra"] is None


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.npz")
    save_checkpoint(path, _params(0), config={"v": 1})
    real_savez = np.savez

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 partial garbage")  # part of a file written...
        raise OSError("disk full (simulated)")  # ...then the write fails

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, _params(1), config={"v": 2})
    monkeypatch.setattr(np, "savez", real_savez)
    out = load_checkpoint(path)
    assert out["config"] == {"v": 1}
    np.testing.assert_array_equal(out["params"]["stem.conv.weight"], _params(0)["stem.conv.weight"])
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # no temp file left behind


def test_keyboard_interrupt_mid_write_keeps_previous(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.npz")
    save_checkpoint(path, _params(0), config={"v": 1})

    def interrupted(f, **arrays):
        f.write(b"xx")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _params(1), config={"v": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["config"] == {"v": 1}


def test_expected_mismatch_names_file_and_arrays(tmp_path):
    p = _params()
    path = save_checkpoint(tmp_path / "c.npz", p, config={})
    exp = {k: v.shape for k, v in p.items()}
    missing = dict(exp, **{"new.weight": (3, 3)})
    with pytest.raises(CheckpointError, match=r"c\.npz.*missing.*param/new\.weight"):
        load_checkpoint(path, expected=missing)
    extra = {k: s for k, s in exp.items() if k != "stem.conv.bias"}
    with pytest.raises(CheckpointError, match=r"unexpected.*param/stem\.conv\.bias"):
        load_checkpoint(path, expected=extra)
    bad = dict(exp, **{"stem.conv.weight": (4, 3, 5, 5)})
    with pytest.raises(CheckpointError, match=r"mis-shaped.*param/stem\.conv\.weight.*\(4, 3, 3, 3\).*\(4, 3, 5, 5\)"):
        load_checkpoint(path, expected=bad)
    assert issubclass(CheckpointError, ValueError)


def test_pickled_object_array_is_refused(tmp_path):
    path = str(tmp_path / "evil.npz")
    meta = np.array(json.dumps({"format": 1, "config": None, "rng_state": None, "extra": None,
                                "has_optimizer": False, "optimizer_scalars": {}}))
    np.savez(path, **{"param/w": np.array([{"a": 1}], dtype=object), "meta": meta})
    with pytest.raises(CheckpointError, match=r"evil\.npz.*param/w.*pickle"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "junk.npz"
    p.write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="junk.npz"):
        load_checkpoint(p)
    q = str(tmp_path / "nometa.npz")
    np.savez(q, w=np.zeros(2))
    with pytest.raises(CheckpointError, match="meta"):
        load_checkpoint(q)
    r = str(tmp_path / "v99.npz")
    np.savez(r, meta=np.array(json.dumps({"format": 99})))
    with pytest.raises(CheckpointError, match="version"):
        load_checkpoint(r)


def test_non_json_config_rejected(tmp_path):
    with pytest.raises(TypeError, match="config"):
        save_checkpoint(tmp_path / "x.npz", _params(), config={"f": object()})


def test_write_json_is_atomic(tmp_path):
    from mrcnn_ref._io import atomic_write, write_json

    p = tmp_path / "out.json"
    write_json({"a": 1}, p)
    with pytest.raises(RuntimeError):
        with atomic_write(p) as f:
            f.write('{"half": ')
            raise RuntimeError("crash mid-write")
    assert p.read_text() == '{"a": 1}'
    assert [x.name for x in tmp_path.iterdir()] == ["out.json"]
