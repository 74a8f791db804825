"""Camera-image encoders for diffusion policies: one feature vector per image, once per chunk.

The encoder of Chi et al. (and LeRobot's ``diffusion.rgb_encoder``): optional resize, a crop
(random while training, centred at inference), a ResNet trunk whose BatchNorms may be GroupNorms
(``num_features // 16`` groups), spatial-softmax keypoints, then a linear layer and a ReLU. Module
and parameter names follow torchvision's ResNet as LeRobot keeps it (``backbone.0`` is ``conv1``,
``backbone.4`` ... ``backbone.7`` are ``layer1`` ... ``layer4``), so LeRobot's weights load as they
are, and torchvision is not needed.

``backbone="conv"`` is a small convolutional trunk (a few strided 3x3 convolutions with GroupNorm)
that trains on a CPU in minutes, for this project's own image policies.

The policy runs the encoder once per predicted chunk, before the denoising loop: the sampler only
ever sees the resulting conditioning vector (:meth:`asd_policy.policy.DiffusionPolicy.encode`).

Images enter the encoder as float ``[N, C, H, W]`` in ``[0, 1]`` after the policy's per-channel
normalisation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from asd_policy.core.config import check_choice, check_keys

__all__ = ["VisionConfig", "RgbEncoder", "SpatialSoftmax", "resnet_trunk", "conv_trunk", "center_crop", "random_crop"]

#: ResNet depths built from basic blocks (torchvision's layer sizes); deeper ResNets use bottlenecks.
RESNET_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
BACKBONES = (*RESNET_BLOCKS, "conv")


def _pair(value: Any, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    v = [value, value] if isinstance(value, (int, np.integer)) else list(value)
    if len(v) != 2 or any(int(x) < 1 for x in v):
        raise ValueError(f"vision.{name} must be [height, width] of positive ints (or null), got {value!r}")
    return int(v[0]), int(v[1])


@dataclass
class VisionConfig:
    """The image encoder's settings (stored in the checkpoint; LeRobot's DiffusionConfig names in brackets)."""

    backbone: str = "resnet18"  # resnet18 | resnet34 | conv  [vision_backbone]
    use_group_norm: bool = True  # GroupNorm (num_features // 16 groups) for every BatchNorm  [use_group_norm]
    keypoints: int = 32  # spatial-softmax keypoints; the feature is 2 * keypoints wide  [spatial_softmax_num_keypoints]
    crop_shape: tuple[int, int] | None = None  # [h, w] cropped after resizing; None: no crop  [crop_shape]
    crop_is_random: bool = True  # random crops while training (centre crops at inference)  [crop_is_random]
    resize_shape: tuple[int, int] | None = None  # [h, w] bilinear resize first; None: as given  [resize_shape]
    separate_per_camera: bool = False  # one encoder per camera instead of a shared one  [use_separate_rgb_encoder_per_camera]
    conv_channels: tuple[int, ...] = (32, 64, 128)  # backbone="conv": output channels of its stride-2 convolutions

    def __post_init__(self) -> None:
        check_choice("vision.backbone", self.backbone, BACKBONES)
        self.crop_shape = _pair(self.crop_shape, "crop_shape")
        self.resize_shape = _pair(self.resize_shape, "resize_shape")
        if int(self.keypoints) < 1:
            raise ValueError(f"vision.keypoints must be a positive int, got {self.keypoints!r}")
        self.keypoints = int(self.keypoints)
        self.conv_channels = tuple(int(c) for c in self.conv_channels)
        if not self.conv_channels or any(c < 16 or c % 16 for c in self.conv_channels):
            raise ValueError(f"vision.conv_channels must be multiples of 16 (GroupNorm groups of 16 channels), "
                             f"got {list(self.conv_channels)}")

    @property
    def feature_dim(self) -> int:
        return 2 * self.keypoints

    def input_hw(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """The (height, width) the trunk sees for an image of ``image_hw``: resize, then crop."""
        h, w = self.resize_shape or image_hw
        if self.crop_shape is not None:
            ch, cw = self.crop_shape
            if ch > h or cw > w:
                raise ValueError(f"vision.crop_shape {list(self.crop_shape)} is larger than the image it crops "
                                 f"({h}x{w}{' after resize' if self.resize_shape else ''}); choose a smaller crop")
            return ch, cw
        return h, w

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "VisionConfig":
        check_keys("policy vision", d, cls.__dataclass_fields__)
        return cls(**d)


# ---- trunks ------------------------------------------------------------------------------------


def _norm(channels: int, group_norm: bool) -> nn.Module:
    return nn.GroupNorm(channels // 16, channels) if group_norm else nn.BatchNorm2d(channels)


class BasicBlock(nn.Module):
    """ResNet's two 3x3 convolutions with a skip (a strided 1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, group_norm: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _norm(cout, group_norm)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = _norm(cout, group_norm)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _norm(cout, group_norm))

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + skip)


def resnet_trunk(name: str, group_norm: bool, in_channels: int = 3) -> nn.Sequential:
    """A ResNet without its pooling and classifier: stem (indices 0-3), then layer1..layer4 (4-7)."""
    blocks = RESNET_BLOCKS[name]
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False), _norm(64, group_norm),
        nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1),
    ]
    cin = 64
    for i, n in enumerate(blocks):
        cout = 64 * 2**i
        stage = [BasicBlock(cin, cout, 1 if i == 0 else 2, group_norm)]
        stage += [BasicBlock(cout, cout, 1, group_norm) for _ in range(n - 1)]
        layers.append(nn.Sequential(*stage))
        cin = cout
    return nn.Sequential(*layers)


def conv_trunk(channels: tuple[int, ...], in_channels: int = 3) -> nn.Sequential:
    """Stride-2 3x3 convolutions, each followed by GroupNorm (16 channels a group) and a ReLU."""
    layers: list[nn.Module] = []
    cin = in_channels
    for cout in channels:
        layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(cout // 16, cout), nn.ReLU(inplace=True)]
        cin = cout
    return nn.Sequential(*layers)


# ---- pooling -----------------------------------------------------------------------------------


class SpatialSoftmax(nn.Module):
    """Keypoints: a 1x1 convolution to ``keypoints`` maps, a softmax over each map's pixels, and the
    expected (x, y) position under it on a [-1, 1] grid (Finn et al.; robomimic's layer)."""

    def __init__(self, channels: int, height: int, width: int, keypoints: int):
        super().__init__()
        self.nets = nn.Conv2d(channels, keypoints, kernel_size=1)
        self.keypoints = keypoints
        # built in float64 by numpy, then rounded, as LeRobot builds it (torch.linspace differs in the last bit)
        xs, ys = np.meshgrid(np.linspace(-1.0, 1.0, width), np.linspace(-1.0, 1.0, height))
        grid = np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1)
        self.register_buffer("pos_grid", torch.from_numpy(grid).float())

    def forward(self, features: Tensor) -> Tensor:
        maps = self.nets(features)
        attention = F.softmax(maps.flatten(2), dim=-1)  # [N, K, H*W]
        return attention @ self.pos_grid  # [N, K, 2]


# ---- crops -------------------------------------------------------------------------------------


def center_crop(x: Tensor, shape: tuple[int, int]) -> Tensor:
    """The centred ``shape`` window (torchvision's rounding of the offsets)."""
    h, w = x.shape[-2:]
    top, left = int(round((h - shape[0]) / 2.0)), int(round((w - shape[1]) / 2.0))
    return x[..., top : top + shape[0], left : left + shape[1]]


def random_crop(x: Tensor, shape: tuple[int, int], generator: torch.Generator | None = None) -> Tensor:
    """An independent uniformly placed ``shape`` window for each image of ``x`` ``[N, C, H, W]``."""
    n, (h, w) = x.shape[0], x.shape[-2:]
    tops = torch.randint(0, h - shape[0] + 1, (n,), generator=generator)
    lefts = torch.randint(0, w - shape[1] + 1, (n,), generator=generator)
    rows = (tops[:, None] + torch.arange(shape[0]))[:, None, :, None].to(x.device)
    cols = (lefts[:, None] + torch.arange(shape[1]))[:, None, None, :].to(x.device)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    return x.permute(0, 2, 3, 1)[batch, rows, cols].squeeze(1).permute(0, 3, 1, 2)


# ---- the encoder -------------------------------------------------------------------------------


class RgbEncoder(nn.Module):
    """``[N, C, H, W]`` normalised images -> ``[N, 2 * keypoints]`` features (resize, crop, trunk, keypoints, linear, ReLU)."""

    def __init__(self, config: VisionConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        self.config = config
        channels, h, w = (int(s) for s in image_shape)
        self.image_shape = (channels, h, w)
        if config.backbone == "conv":
            self.backbone = conv_trunk(config.conv_channels, channels)
        else:
            self.backbone = resnet_trunk(config.backbone, config.use_group_norm, channels)
        th, tw = config.input_hw((h, w))
        with torch.no_grad():  # the trunk's output shape for the images it will see
            fmap = self.backbone.eval()(torch.zeros(1, channels, th, tw)).shape[1:]
        self.backbone.train()
        if fmap[1] * fmap[2] == 1:
            raise ValueError(f"the {config.backbone} trunk reduces {th}x{tw} images to a 1x1 map, where keypoints carry "
                             f"nothing of the image; use larger images (a ResNet needs more than 32 pixels a side) "
                             f"or a smaller crop / resize_shape")
        self.pool = SpatialSoftmax(fmap[0], fmap[1], fmap[2], config.keypoints)
        self.out = nn.Linear(config.feature_dim, config.feature_dim)

    @property
    def feature_dim(self) -> int:
        return self.config.feature_dim

    def preprocess(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        cfg = self.config
        if cfg.resize_shape is not None:
            x = F.interpolate(x, size=cfg.resize_shape, mode="bilinear", align_corners=False, antialias=True)
        if cfg.crop_shape is not None:
            x = random_crop(x, cfg.crop_shape, generator) if self.training and cfg.crop_is_random else center_crop(x, cfg.crop_shape)
        return x

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"the image encoder takes [N, {', '.join(map(str, self.image_shape))}] images, got {list(x.shape)}")
        keypoints = self.pool(self.backbone(self.preprocess(x, generator)))
        return F.relu(self.out(keypoints.flatten(1)))


# ---- camera observations -> conditioning features ----------------------------------------------


def image_batch(value: Any, shape: tuple[int, int, int], name: str, device: torch.device) -> Tensor:
    """One camera's images as float ``[B, T, C, H, W]`` in ``[0, 1]``.

    Two layouts are accepted: uint8 ``[B, T, H, W, C]`` (what cameras, gymnasium envs and robomimic
    datasets give) and float ``[B, T, C, H, W]`` already in ``[0, 1]`` (LeRobot's batches).
    """
    x = torch.as_tensor(value, device=device)
    c, h, w = shape
    if x.dtype == torch.uint8:
        if x.dim() != 5 or tuple(x.shape[2:]) != (h, w, c):
            raise ValueError(f"camera {name!r}: uint8 images must be [B, n_obs_steps, {h}, {w}, {c}] (HWC), got {list(x.shape)}")
        return x.permute(0, 1, 4, 2, 3).float() / 255.0
    if not torch.is_floating_point(x):
        raise ValueError(f"camera {name!r}: images must be uint8 [B, T, H, W, C] or float [B, T, C, H, W] in [0, 1], "
                         f"got dtype {x.dtype}")
    if x.dim() != 5 or tuple(x.shape[2:]) != (c, h, w):
        raise ValueError(f"camera {name!r}: float images must be [B, n_obs_steps, {c}, {h}, {w}] (CHW, in [0, 1]), "
                         f"got {list(x.shape)}")
    return x.float()


class CameraFeatures(nn.Module):
    """Every camera's images -> ``[B, T, n_cameras * feature_dim]`` features, cameras in config order.

    Each camera is normalised per channel (``normalizer``, an AffineNormalizer over the cameras'
    channels in order), then encoded, by one shared :class:`RgbEncoder` or one per camera.
    """

    def __init__(self, image_features: list[dict], config: VisionConfig, normalizer: nn.Module | None = None):
        super().__init__()
        from asd_policy.policy.normalizer import AffineNormalizer

        self.names = [f["name"] for f in image_features]
        self.shapes = [tuple(int(s) for s in f["shape"]) for f in image_features]
        if not config.separate_per_camera and len(set(self.shapes)) != 1:
            raise ValueError(f"cameras {self.names} differ in shape {self.shapes}; a shared encoder needs one shape "
                             f"(resize them, or set vision.separate_per_camera)")
        self.config = config
        if config.separate_per_camera:
            self.rgb_encoder = nn.ModuleList([RgbEncoder(config, s) for s in self.shapes])
        else:
            self.rgb_encoder = RgbEncoder(config, self.shapes[0])
        channels = sum(s[0] for s in self.shapes)
        self.normalizer = normalizer if normalizer is not None else AffineNormalizer.identity(channels)
        if self.normalizer.dim != channels:
            raise ValueError(f"the image normaliser covers {self.normalizer.dim} channels, the cameras have {channels}")

    @property
    def feature_dim(self) -> int:
        return len(self.names) * self.config.feature_dim

    def _encoder(self, i: int) -> RgbEncoder:
        return self.rgb_encoder[i] if isinstance(self.rgb_encoder, nn.ModuleList) else self.rgb_encoder

    def forward(self, images: dict[str, Any], generator: torch.Generator | None = None) -> Tensor:
        missing = [n for n in self.names if n not in images]
        if missing:
            raise ValueError(f"this policy sees cameras {self.names}; the observation lacks {missing} (pass each "
                             f"camera's [B, n_obs_steps, H, W, 3] uint8 images under its name)")
        device = self.normalizer.scale.device
        start, feats = 0, []
        for i, (name, shape) in enumerate(zip(self.names, self.shapes)):
            x = image_batch(images[name], shape, name, device)  # [B, T, C, H, W]
            b, t, c = x.shape[:3]
            # per-channel normalisation: the normaliser acts on the last axis
            x = self.normalizer_slice(x.movedim(2, -1), start, c).movedim(-1, 2)
            start += c
            feats.append(self._encoder(i)(x.reshape(b * t, *x.shape[2:]), generator).reshape(b, t, -1))
        return torch.cat(feats, dim=-1)

    def normalizer_slice(self, x: Tensor, start: int, channels: int) -> Tensor:
        n = self.normalizer
        return x * n.scale[start : start + channels].to(x.dtype) + n.offset[start : start + channels].to(x.dtype)
