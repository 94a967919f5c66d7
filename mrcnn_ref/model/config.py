"""Model configuration: one flat dataclass, two presets, loading from JSON/TOML.

Every number that shapes the model or its training targets lives here, with the value Mask R-CNN
(He et al. 2017) / torchvision uses unless noted. Two presets:

* ``"tiny"``   — for tests: 64×64 images, 3 classes (incl. background), few channels and proposals,
  so a whole forward/backward pass takes milliseconds and a float64 gradient check of the *whole*
  training loss runs in seconds.
* ``"shapes"`` — the built-in synthetic shapes data set: 128×128 images, 4 classes (background,
  square, circle, triangle), the tiny ResNet-FPN backbone, anchors sized for objects of ~10–60 px.

Use :func:`load_config` with a preset name or a path to a JSON/TOML file; a file may name a
``"preset"`` to start from and override any subset of the keys. Unknown keys are an error (a typo
should never silently fall back to a default).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field, fields

__all__ = ["MaskRCNNConfig", "PRESETS", "INFERENCE_KEYS", "get_preset", "load_config", "config_from_dict",
           "with_inference_overrides", "read_config_file"]

ROI_OPS = ("roi_align", "roi_align_max", "roi_warp", "roi_pool")
MASK_LOSSES = ("sigmoid", "softmax")
MATRIX_NMS = ("off", "per_class", "all_classes")
BACKBONES = ("resnet_fpn_tiny", "resnet50_fpn")
FEATURE_MODES = ("fpn", "single")
SINGLE_STRIDES = (16, 32)


@dataclass
class MaskRCNNConfig:
    """All hyper-parameters of the model (field names are the keys of the JSON/TOML files).

    Sizes are in input-image pixels; boxes are (x1, y1, x2, y2).
    """

    name: str = "custom"
    # --- data / backbone -------------------------------------------------------------------
    num_classes: int = 4                      # K, including background (class 0)
    image_size: int = 128                     # nominal training image side (images are padded to /32)
    backbone: str = "resnet_fpn_tiny"         # a preset of mrcnn_ref.model.backbone
    backbone_overrides: dict = field(default_factory=dict)  # BackboneConfig fields to change
    feature_mode: str = "fpn"                 # fpn: P2..P6 | single: one ResNet map, no FPN (Table 2c/d)
    single_stride: int = 16                   # feature_mode "single": 16 (C4) or 32 (C5)
    # --- anchors / RPN ---------------------------------------------------------------------
    anchor_sizes: tuple = (8, 16, 32, 64, 128)  # one size per level P2..P6 (strides 4..64)
    anchor_ratios: tuple = (0.5, 1.0, 2.0)    # height / width
    anchor_scales: tuple = (1.0,)             # per level: sizes = size * scale (FPN: one; RetinaNet: 3)
    rpn_fg_iou: float = 0.7                   # anchor IoU >= this -> positive
    rpn_bg_iou: float = 0.3                   # anchor IoU < this -> negative
    rpn_batch_size: int = 256                 # anchors sampled per image
    rpn_positive_fraction: float = 0.5
    rpn_pre_nms_top_n_train: int = 2000       # per level
    rpn_pre_nms_top_n_test: int = 1000        # per level
    rpn_post_nms_top_n_train: int = 512       # per image
    rpn_post_nms_top_n_test: int = 300        # per image
    rpn_nms_thresh: float = 0.7
    rpn_min_size: float = 1e-3                # proposals smaller than this (px) are dropped
    rpn_smooth_l1_beta: float = 1.0 / 9.0     # as torchvision's RPN
    # --- RoI sampling (proposal targets) ---------------------------------------------------
    box_batch_size_per_image: int = 128
    box_positive_fraction: float = 0.25
    box_fg_iou: float = 0.5                   # proposal IoU >= this -> foreground
    box_bg_iou_low: float = 0.0               # background: [bg_low, fg_iou); Fast R-CNN used 0.1
    box_weights: tuple = (10.0, 10.0, 5.0, 5.0)
    mask_rois_per_image: int = 0              # mask loss on at most this many fg RoIs (0: all, the paper)
    box_smooth_l1_beta: float = 1.0 / 9.0     # as torchvision's RoI heads
    # --- RoI feature extraction ------------------------------------------------------------
    roi_op: str = "roi_align"                 # roi_align | roi_align_max | roi_warp | roi_pool
    roi_sampling_ratio: int = 2               # bilinear samples per bin side (-1: adaptive)
    roi_aligned: bool = False                 # half-pixel shift (torchvision default: False)
    roi_canonical_size: float = 224.0         # FPN paper eq. (1): k = floor(k0 + log2(sqrt(wh)/224))
    roi_canonical_level: int = 4
    box_roi_size: int = 7
    mask_roi_size: int = 14
    # --- heads -----------------------------------------------------------------------------
    box_head_dim: int = 256                   # width of the two FC layers
    mask_head_convs: int = 2                  # number of 3x3 convs before the 2x deconv
    mask_head_channels: int = 64
    mask_loss: str = "sigmoid"                # sigmoid (per class, the paper) | softmax (ablation)
    mask_class_agnostic: bool = False         # one mask channel for every class (sigmoid only)
    # --- inference -------------------------------------------------------------------------
    score_thresh: float = 0.05
    nms_thresh: float = 0.5                   # per class
    detections_per_img: int = 100
    box_min_size: float = 1e-2
    mask_threshold: float = 0.5
    test_flip: bool = False                   # average with the mirrored image (mrcnn_ref.model.tta)
    test_scales: tuple = (1.0,)               # ... and with the image enlarged by these factors (1.0: itself)
    box_refine: bool = False                  # box head once more at the detections (predict)
    mask_rescoring: bool = False              # score *= mean kept mask probability (SOLOv2 "maskness")
    matrix_nms: str = "off"                   # off | per_class | all_classes: SOLOv2's mask-IoU score decay
    matrix_nms_sigma: float = 2.0             # its Gaussian kernel: decay = exp(-sigma * iou^2 ...)

    @property
    def mask_size(self) -> int:
        """Side of the predicted mask: the 2x deconvolution doubles the RoI feature side (14 -> 28)."""
        return 2 * self.mask_roi_size

    @property
    def num_anchors_per_location(self) -> int:
        """FPN: ratios x scales at each level; single level: every size of every level on one map."""
        per_size = len(self.anchor_ratios) * len(self.anchor_scales)
        return per_size if self.feature_mode == "fpn" else per_size * len(self.anchor_sizes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    def replace(self, **changes) -> "MaskRCNNConfig":
        """A validated copy with some fields changed."""
        return config_from_dict({**self.to_dict(), **changes})

    def validate(self) -> "MaskRCNNConfig":
        where = "MaskRCNNConfig"
        check_field_types(self, where)

        def positive(name, integer=False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
                raise TypeError(f"{where}: {name} must be {'an int' if integer else 'a number'}, got {v!r}")
            if not v > 0:
                raise ValueError(f"{where}: {name} must be > 0, got {v!r}")

        for n in ("num_classes", "image_size", "rpn_batch_size", "rpn_pre_nms_top_n_train",
                  "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train", "rpn_post_nms_top_n_test",
                  "box_batch_size_per_image", "box_roi_size", "mask_roi_size", "box_head_dim",
                  "mask_head_channels", "detections_per_img", "roi_canonical_level"):
            positive(n, integer=True)
        if self.num_classes < 2:
            raise ValueError(f"{where}: num_classes counts the background, so it must be >= 2, "
                             f"got {self.num_classes}")
        if (isinstance(self.mask_rois_per_image, bool) or not isinstance(self.mask_rois_per_image, int)
                or self.mask_rois_per_image < 0):
            raise ValueError(f"{where}: mask_rois_per_image must be an int >= 0 (0: every foreground "
                             f"RoI), got {self.mask_rois_per_image!r}")
        if not isinstance(self.mask_head_convs, int) or self.mask_head_convs < 0:
            raise ValueError(f"{where}: mask_head_convs must be an int >= 0, got {self.mask_head_convs!r}")
        for n in ("rpn_nms_thresh", "nms_thresh", "rpn_positive_fraction", "box_positive_fraction",
                  "box_fg_iou", "rpn_fg_iou"):
            v = getattr(self, n)
            if not (isinstance(v, (int, float)) and 0.0 < v <= 1.0):
                raise ValueError(f"{where}: {n} must be in (0, 1], got {v!r}")
        if not 0.0 <= self.rpn_bg_iou <= self.rpn_fg_iou:
            raise ValueError(f"{where}: need 0 <= rpn_bg_iou <= rpn_fg_iou, got "
                             f"{self.rpn_bg_iou} and {self.rpn_fg_iou}")
        if not 0.0 <= self.box_bg_iou_low < self.box_fg_iou:
            raise ValueError(f"{where}: need 0 <= box_bg_iou_low < box_fg_iou, got "
                             f"{self.box_bg_iou_low} and {self.box_fg_iou}")
        if len(self.anchor_sizes) != 5:
            raise ValueError(f"{where}: anchor_sizes needs one size per FPN level P2..P6 (5 values), "
                             f"got {list(self.anchor_sizes)}")
        if len(self.anchor_scales) < 1 or any(not s > 0 for s in self.anchor_scales):
            raise ValueError(f"{where}: anchor_scales must be positive numbers, got {list(self.anchor_scales)}")
        if len(self.anchor_ratios) < 1 or any(not r > 0 for r in self.anchor_ratios):
            raise ValueError(f"{where}: anchor_ratios must be positive numbers, got {list(self.anchor_ratios)}")
        if len(self.box_weights) != 4:
            raise ValueError(f"{where}: box_weights must have 4 values, got {list(self.box_weights)}")
        if self.roi_op not in ROI_OPS:
            raise ValueError(f"{where}: roi_op must be one of {ROI_OPS}, got {self.roi_op!r}")
        if self.mask_loss not in MASK_LOSSES:
            raise ValueError(f"{where}: mask_loss must be one of {MASK_LOSSES}, got {self.mask_loss!r}")
        if self.matrix_nms not in MATRIX_NMS:
            raise ValueError(f"{where}: matrix_nms must be one of {MATRIX_NMS}, got {self.matrix_nms!r}")
        positive("matrix_nms_sigma")
        if self.backbone not in BACKBONES:
            raise ValueError(f"{where}: backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if not (isinstance(self.roi_sampling_ratio, int) and (self.roi_sampling_ratio > 0
                                                               or self.roi_sampling_ratio == -1)):
            raise ValueError(f"{where}: roi_sampling_ratio must be a positive int or -1, "
                             f"got {self.roi_sampling_ratio!r}")
        if not isinstance(self.backbone_overrides, dict):
            raise TypeError(f"{where}: backbone_overrides must be a dict, got {self.backbone_overrides!r}")
        if self.feature_mode not in FEATURE_MODES:
            raise ValueError(f"{where}: feature_mode must be one of {FEATURE_MODES}, got {self.feature_mode!r}")
        if self.single_stride not in SINGLE_STRIDES:
            raise ValueError(f"{where}: single_stride must be one of {SINGLE_STRIDES}, got {self.single_stride!r}")
        if self.mask_class_agnostic and self.mask_loss != "sigmoid":
            raise ValueError(f"{where}: mask_class_agnostic needs mask_loss 'sigmoid' (a softmax over "
                             f"one channel has nothing to compare), got {self.mask_loss!r}")
        for n in ("test_flip", "box_refine", "mask_rescoring", "roi_aligned", "mask_class_agnostic"):
            if not isinstance(getattr(self, n), bool):
                raise TypeError(f"{where}: {n} must be true or false, got {getattr(self, n)!r}")
        scales = self.test_scales

        def is_factor(v):
            return not isinstance(v, bool) and isinstance(v, (int, float)) and 0 < v <= 8

        if not isinstance(scales, (tuple, list)) or not scales or not all(map(is_factor, scales)):
            raise ValueError(f"{where}: test_scales must be a non-empty list of numbers in (0, 8], got "
                             f"{scales!r}")
        if 1.0 not in scales or len(set(scales)) != len(scales):
            raise ValueError(f"{where}: test_scales must contain 1.0 (the proposals come from the image at "
                             f"its own size) and no factor twice, got {list(scales)}")
        if not 0.0 <= self.score_thresh < 1.0:
            raise ValueError(f"{where}: score_thresh must be in [0, 1), got {self.score_thresh!r}")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ValueError(f"{where}: mask_threshold must be in (0, 1), got {self.mask_threshold!r}")
        for n in ("anchor_sizes", "box_weights"):
            if any(not v > 0 for v in getattr(self, n)):
                raise ValueError(f"{where}: {n} must be numbers > 0, got {list(getattr(self, n))}")
        for n in ("rpn_smooth_l1_beta", "box_smooth_l1_beta", "box_min_size"):
            if getattr(self, n) < 0:
                raise ValueError(f"{where}: {n} must be >= 0, got {getattr(self, n)!r}")
        if not self.rpn_min_size > 0:      # a zero-size proposal has no box regression target
            raise ValueError(f"{where}: rpn_min_size must be > 0 (proposals of zero width or height "
                             f"have no regression target), got {self.rpn_min_size!r}")
        positive("roi_canonical_size")
        return self


_FIELDS = {f.name: f for f in fields(MaskRCNNConfig)}


#: Largest magnitude of a number in a config: beyond it an int is not a float exactly (JSON,
#: TOML and NumPy read it differently) and no setting of the model makes sense.
MAX_CONFIG_NUMBER = 2 ** 53


def _finite_number(x) -> bool:
    """A finite int/float of sane size (``math.isfinite`` overflows on huge ints)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    if isinstance(x, int):
        return abs(x) <= MAX_CONFIG_NUMBER
    return math.isfinite(x)


def check_field_types(config, where):
    """Every field of a config dataclass has its declared type; numbers are finite (ints at most
    ``2**53`` in size). (The ranges are checked by each class's ``validate``.)"""
    for f in fields(config):
        v = getattr(config, f.name)
        if f.type == "bool":
            ok = isinstance(v, bool)
        elif f.type in ("int", "float"):
            ok = (isinstance(v, int) if f.type == "int" else isinstance(v, (int, float))) \
                and not isinstance(v, bool)
            if ok and not _finite_number(v):
                raise ValueError(f"{where}: {f.name} must be a finite number of at most 2**53 in "
                                 f"size, got {v!r}")
        elif f.type == "tuple":
            ok = isinstance(v, (tuple, list)) and all(map(_finite_number, v))
        elif f.type == "str":
            ok = isinstance(v, str)
        elif f.type == "dict":
            ok = isinstance(v, dict)
        else:
            continue
        if not ok:
            what = {"tuple": "a non-empty list of finite numbers", "int": "an int", "float": "a number",
                    "bool": "true or false", "str": "a string", "dict": "a table"}[f.type]
            error = ValueError if f.type == "tuple" else TypeError    # a list's contents are values
            raise error(f"{where}: {f.name} must be {what}, got {v!r}")

#: The fields that only change inference (not the weights): what ``mrcnn-ref evaluate/predict
#: --set KEY=VALUE`` may override on a trained model.
INFERENCE_KEYS = ("rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test", "score_thresh", "nms_thresh",
                  "detections_per_img", "box_min_size", "mask_threshold", "test_flip", "test_scales",
                  "box_refine", "mask_rescoring", "matrix_nms", "matrix_nms_sigma")


def with_inference_overrides(config: MaskRCNNConfig, settings) -> MaskRCNNConfig:
    """A validated copy of ``config`` with inference fields changed.

    settings: a dict, or a list of ``"KEY=VALUE"`` strings with JSON values (``test_flip=false``,
    ``score_thresh=0.3``). Keys outside :data:`INFERENCE_KEYS` raise ``ValueError`` (they would not
    match the trained weights).
    """
    where = "inference override"
    if isinstance(settings, dict):
        changes = dict(settings)
    else:
        changes = {}
        for item in settings or ():
            key, sep, text = str(item).partition("=")
            key = key.strip()
            if not sep or not key:
                raise ValueError(f"{where}: expected KEY=VALUE, got {item!r}")
            try:
                changes[key] = json.loads(text)
            except json.JSONDecodeError:
                if key in _FIELDS and _FIELDS[key].type == "str":    # matrix_nms=all_classes
                    changes[key] = text.strip()
                    continue
                raise ValueError(f"{where}: the value of {key} must be JSON (true, false, a number) or, "
                                 f"for a text setting such as matrix_nms, a word; "
                                 f"got {text!r}") from None
    bad = sorted(set(changes) - set(INFERENCE_KEYS))
    if bad:
        raise ValueError(f"{where}: {bad} cannot be changed after training; inference keys are "
                         f"{list(INFERENCE_KEYS)}")
    return config.replace(**changes)


def config_from_dict(d: dict) -> MaskRCNNConfig:
    """Build a validated config from a dict (lists become tuples); unknown keys raise ValueError."""
    if not isinstance(d, dict):
        raise TypeError(f"config_from_dict: expected a dict, got {type(d).__name__}")
    unknown = sorted(set(d) - set(_FIELDS))
    if unknown:
        raise ValueError(f"config_from_dict: unknown config key(s) {unknown}; valid keys are "
                         f"{sorted(_FIELDS)}")
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
    if isinstance(kw.get("backbone_overrides"), dict):
        kw["backbone_overrides"] = dict(kw["backbone_overrides"])
    # ints given where floats are expected are fine; floats where ints are expected are not
    for k, v in kw.items():
        if _FIELDS[k].type == "float" and isinstance(v, int) and not isinstance(v, bool) \
                and _finite_number(v):
            kw[k] = float(v)           # (a huge int stays, and check_field_types names it)
    return MaskRCNNConfig(**kw).validate()


PRESETS: dict[str, dict] = {
    # Sized for 128-px images with 1-4 objects of 10-60 px: anchors 16..256 with three scales
    # per level (RetinaNet's 2^(0, 1/3, 2/3)) so every object has several positive anchors; fewer
    # proposals and RoIs than COCO needs. RoIAlign with the half-pixel shift (Detectron2's
    # aligned=True); per-class NMS at IoU 0.7, since shapes overlap and nest. Test-time
    # refinements (mrcnn_ref.model.tta), each chosen on training-split images 2000-2299 that the
    # recipe never trains on. The findings behind every value: docs/recipe.md.
    "shapes": dict(name="shapes", anchor_sizes=(16, 32, 64, 128, 256),
                   anchor_scales=(1.0, 1.26, 1.587),                 # ~2^(0, 1/3, 2/3)
                   rpn_pre_nms_top_n_train=500, rpn_post_nms_top_n_train=256,
                   box_batch_size_per_image=64, roi_aligned=True,
                   test_flip=True, test_scales=(1.0, 1.5), box_refine=True, mask_rescoring=True,
                   nms_thresh=0.7, matrix_nms="all_classes"),
    "tiny": dict(
        name="tiny", num_classes=3, image_size=64,
        backbone_overrides=dict(stem_channels=8, widths=(8, 8, 16, 16), fpn_channels=16, gn_groups=4),
        anchor_sizes=(8, 16, 32, 64, 128),
        rpn_batch_size=64, rpn_pre_nms_top_n_train=100, rpn_pre_nms_top_n_test=50,
        rpn_post_nms_top_n_train=32, rpn_post_nms_top_n_test=16,
        box_batch_size_per_image=16, box_head_dim=32,
        mask_head_convs=1, mask_head_channels=8,
        box_roi_size=7, mask_roi_size=7, detections_per_img=20,
        roi_canonical_size=32.0,      # 64-px images: spread the RoIs over P2..P5 (<16 px P2, >=64 P5)
    ),
}


def get_preset(name: str) -> MaskRCNNConfig:
    if name not in PRESETS:
        raise ValueError(f"get_preset: unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return config_from_dict(dict(PRESETS[name]))


def read_config_file(path) -> dict:
    """The dict in a ``.json`` or ``.toml`` config file (model or run configs alike); a file that
    cannot be read or parsed, or that does not hold a table, is a ``ValueError`` naming it."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".json", ".toml"):
        raise ValueError(f"config file {path!r} must end in .json or .toml")
    try:
        if ext == ".json":
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        else:
            try:
                import tomllib  # noqa: PLC0415 - Python >= 3.11
            except ModuleNotFoundError:  # pragma: no cover - 3.10 only
                raise ValueError(f"reading TOML ({path}) needs Python >= 3.11; use a JSON config") from None
            with open(path, "rb") as f:
                d = tomllib.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"config file {path!r} is not valid JSON: {e}") from None
    except OSError as e:
        raise ValueError(f"config file {path!r} cannot be read: {e.strerror}") from None
    except Exception as e:  # tomllib.TOMLDecodeError (imported lazily)
        if type(e).__name__ != "TOMLDecodeError":
            raise
        raise ValueError(f"config file {path!r} is not valid TOML: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"config file {path!r} must hold a table of keys, got {type(d).__name__}")
    return d


def load_config(name_or_path) -> MaskRCNNConfig:
    """A config from a preset name (``"tiny"``, ``"shapes"``), a dict, an existing config, or a
    JSON/TOML file. A file/dict may contain ``"preset": "<name>"`` to override a preset's values."""
    if isinstance(name_or_path, MaskRCNNConfig):
        return name_or_path.replace()
    if isinstance(name_or_path, dict):
        d = dict(name_or_path)
    elif isinstance(name_or_path, (str, os.PathLike)):
        s = os.fspath(name_or_path)
        if s in PRESETS:
            return get_preset(s)
        if not os.path.exists(s):
            raise ValueError(f"load_config: {s!r} is neither a preset ({sorted(PRESETS)}) nor an "
                             "existing .json/.toml file")
        d = read_config_file(s)
    else:
        raise TypeError(f"load_config: expected a preset name, a path, a dict or a MaskRCNNConfig, "
                        f"got {type(name_or_path).__name__}")
    preset = d.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"load_config: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    base = dict(PRESETS[preset]) if preset is not None else {}
    return config_from_dict({**base, **d})

