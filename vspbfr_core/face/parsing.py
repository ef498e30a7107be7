"""Face parsing for the ``parsing`` paste mask: which pixels of an aligned face crop are face.

Two networks, written here from their published shapes and formulas, whose module and attribute names are those of
facexlib's released state dicts, so the files load with exactly their keys (strictly, see :func:`load_parser`):

* ``parsenet`` -- ``parsing_parsenet.pth`` (facexlib release v0.2.2; PSFRGAN's ParseNet as facexlib's
  ``init_parsing_model('parsenet')`` builds it: ``ParseNet(in_size=512, out_size=512, parsing_ch=19)``). A
  residual encoder / body / decoder: a 3x3 convolution to 64 channels, four down blocks to 1/16 (channels
  ``clip(64 * 2**k, 32, 256)``), ten residual blocks, four up blocks (nearest x2) back to full size, then a 3x3
  convolution to the 19 parsing logits (a second 3x3 head, to an RGB image, is loaded but never run). Every 3x3
  convolution reflects one pixel of padding; BatchNorm + LeakyReLU(0.2) inside the blocks. Input: RGB in [-1, 1]
  (``(x - 0.5) / 0.5``, as facexlib's ``FaceRestoreHelper`` normalises it); the parsing map is the network's
  *first* output (``out_mask``).
* ``bisenet`` -- ``parsing_bisenet.pth`` (facexlib release v0.2.0; byte-identical to zllrunning's
  face-parsing.PyTorch ``79999_iter.pth``: both have sha256 ``468e13ca...b26567``). A ResNet-18 context path with
  attention refinement at 1/16 and 1/32, fused with the 1/8 features, and a 19-class head upsampled bilinearly
  (``align_corners=True``) to the input size; the two auxiliary heads of training (``conv_out16``, ``conv_out32``)
  are loaded but never run. Input: RGB normalised with ImageNet's mean (0.485, 0.456, 0.406) and std
  (0.229, 0.224, 0.225), as face-parsing.PyTorch's ``test.py`` does; the parsing map is the first output.

Both run at 512 x 512 (:class:`FaceParser` resizes the crops in and the probabilities out).

The 19 labels are CelebAMask-HQ's, **in a different order for each network**:

====  ==========  ==========  ==================================
 idx  parsenet    bisenet     our part (or why never pasted)
====  ==========  ==========  ==================================
  0   background  background  never: background
  1   skin        skin        skin / skin
  2   nose        l_brow      nose / brows
  3   eye_g       r_brow      glasses / brows
  4   l_eye       l_eye       eyes / eyes
  5   r_eye       r_eye       eyes / eyes
  6   l_brow      eye_g       brows / glasses
  7   r_brow      l_ear       brows / ears
  8   l_ear       r_ear       ears / ears
  9   r_ear       ear_r       ears / never: earrings
 10   mouth       nose        mouth (inner mouth) / nose
 11   u_lip       mouth       lips / mouth
 12   l_lip       u_lip       lips / lips
 13   hair        l_lip       never: hair / lips
 14   hat         neck        never: hat / never: neck
 15   ear_r       neck_l      never: earrings / never: necklace
 16   neck_l      cloth       never: necklace / never: cloth
 17   neck        hair        never: neck / never: hair
 18   cloth       hat         never: cloth / never: hat
====  ==========  ==========  ==================================

Where the orders come from:

* parsenet: CelebAMask-HQ's own ``face_parsing/Data_preprocessing/g_mask.py`` writes label ``i + 1`` for
  ``['skin', 'nose', 'eye_g', 'l_eye', 'r_eye', 'l_brow', 'r_brow', 'l_ear', 'r_ear', 'mouth', 'u_lip', 'l_lip',
  'hair', 'hat', 'ear_r', 'neck_l', 'neck', 'cloth']`` (0 = background); PSFRGAN trains its ParseNet on those
  ``CelebAMask-HQ-mask`` images as they are (``data/celebahqmask_dataset.py``), and its ``MASK_COLORMAP``
  (``utils/utils.py``) is exactly CelebAMask-HQ's ``g_color.py`` colour list for that order.
* bisenet: face-parsing.PyTorch's ``prepropess_data.py`` writes label ``i + 1`` for ``['skin', 'l_brow', 'r_brow',
  'l_eye', 'r_eye', 'eye_g', 'l_ear', 'r_ear', 'ear_r', 'nose', 'mouth', 'u_lip', 'l_lip', 'neck', 'neck_l',
  'cloth', 'hair', 'hat']``, and the released file is that project's.

facexlib's comparison: ``FaceRestoreHelper.paste_faces_to_input_image(use_parse=True)`` runs parsenet only and
pastes the argmax classes whose ``MASK_COLORMAP`` entry is 255: indices 1-13 and 15 in parsenet's order, i.e.
skin, nose, glasses, eyes, brows, ears, mouth, lips, **hair** and **earrings**; not background, hat, necklace,
neck, cloth. Our default (every one of :data:`FACE_PARTS`) is facexlib's set without hair and earrings, which we
never paste (:data:`NEVER_PASTED`). Note that facexlib's list read in bisenet's order would mean something else
(neck_l pasted, hair not): the index table must follow the network.

Importing this module imports torch; :mod:`vspbfr_core.face` exposes its names lazily.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError, InputError
from ..paths import PARSING_FILES

__all__ = [
    "PARSERS", "PARSER_FILES", "PARSER_URLS", "PARSER_LABELS", "NUM_CLASSES", "PARSER_SIZE", "FACE_PARTS",
    "DEFAULT_PARTS", "NEVER_PASTED", "PART_LABELS", "NEVER_PASTED_LABELS", "parse_parts", "part_classes",
    "ParseNet", "BiSeNet", "build_parser_network", "FaceParser", "load_parser", "load_parser_state_dict",
    "find_parser_file",
]

log = logging.getLogger(__name__)

PARSERS: tuple[str, ...] = ("parsenet", "bisenet")
PARSER_FILES: dict[str, str] = dict(PARSING_FILES)
PARSER_URLS: dict[str, str] = {
    "parsenet": "https://github.com/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth",
    "bisenet": "https://github.com/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth",
}
NUM_CLASSES = 19
PARSER_SIZE = 512            # the side both networks were trained and are run at

PARSER_LABELS: dict[str, tuple[str, ...]] = {
    "parsenet": ("background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
                 "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth"),
    "bisenet": ("background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
                "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat"),
}

FACE_PARTS: tuple[str, ...] = ("skin", "brows", "eyes", "glasses", "ears", "nose", "mouth", "lips")
DEFAULT_PARTS: tuple[str, ...] = FACE_PARTS
NEVER_PASTED: tuple[str, ...] = ("background", "hair", "hat", "earrings", "necklace", "neck", "cloth")

# our part -> the CelebAMask-HQ labels it covers
PART_LABELS: dict[str, tuple[str, ...]] = {
    "skin": ("skin",), "brows": ("l_brow", "r_brow"), "eyes": ("l_eye", "r_eye"), "glasses": ("eye_g",),
    "ears": ("l_ear", "r_ear"), "nose": ("nose",), "mouth": ("mouth",), "lips": ("u_lip", "l_lip"),
}
NEVER_PASTED_LABELS: dict[str, tuple[str, ...]] = {
    "background": ("background",), "hair": ("hair",), "hat": ("hat",), "earrings": ("ear_r",),
    "necklace": ("neck_l",), "neck": ("neck",), "cloth": ("cloth",),
}

# other spellings accepted by parse_parts: singular forms and the CelebAMask-HQ label names of whole parts
_PART_ALIASES: dict[str, str] = {
    "brow": "brows", "eyebrows": "brows", "eyebrow": "brows", "eye": "eyes", "eye_g": "glasses",
    "ear": "ears", "lip": "lips", "face": "skin",
}
_NEVER_ALIASES: dict[str, str] = {
    "bg": "background", "earring": "earrings", "ear_r": "earrings", "neck_l": "necklace", "clothes": "cloth",
    "hats": "hat",
}
_WHY_NEVER = ("the restored crop holds a restored face only: pasting its hair, hat, jewellery, neck, clothes or "
              "background would replace the photo's own with the network's guess and show the crop's edges")

_MEAN_STD: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "parsenet": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),                       # [0, 1] -> [-1, 1]
    "bisenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),           # ImageNet statistics
}


#----------------------------------------------------------------------------
# Part selection


def parse_parts(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """The face parts to paste, from ``"skin,eyes,..."`` (commas, spaces or ``+`` between names, any case) or a
    sequence of names; ``"all"``, ``"default"``, an empty string or None: every one of :data:`FACE_PARTS`.

    Returns the parts in :data:`FACE_PARTS` order, each once. Raises :class:`InputError` for an unknown name (listing
    the valid ones) and for a name of :data:`NEVER_PASTED` (saying why it is never pasted).
    """
    if text is None:
        return DEFAULT_PARTS
    if isinstance(text, str):
        items = [text]
    elif isinstance(text, Iterable):
        items = list(text)
        if not all(isinstance(t, str) for t in items):
            raise InputError(f"face parts must be names (strings), got {[type(t).__name__ for t in items]}: "
                             f"choose from {', '.join(FACE_PARTS)} (or 'all')")
    else:
        raise InputError(f"face parts must be a string such as 'skin,eyes' or a list of names, got "
                         f"{type(text).__name__}")
    names = [n for item in items for n in item.replace(",", " ").replace("+", " ").lower().split()]
    if not names or names in (["all"], ["default"]):
        return DEFAULT_PARTS
    chosen: set[str] = set()
    never: list[str] = []
    unknown: list[str] = []
    for name in names:
        if name in ("all", "default"):
            chosen.update(FACE_PARTS)
            continue
        part = _PART_ALIASES.get(name, name)
        if part in FACE_PARTS:
            chosen.add(part)
        elif _NEVER_ALIASES.get(name, name) in NEVER_PASTED:
            never.append(name)
        else:
            unknown.append(name)
    if unknown:
        raise InputError(f"unknown face part(s) {', '.join(repr(u) for u in unknown)}: choose from "
                         f"{', '.join(FACE_PARTS)} (or 'all')")
    if never:
        raise InputError(f"face part(s) {', '.join(repr(n) for n in never)} cannot be pasted: "
                         f"{', '.join(NEVER_PASTED)} never are ({_WHY_NEVER}). Choose from {', '.join(FACE_PARTS)} "
                         "(or 'all').")
    return tuple(p for p in FACE_PARTS if p in chosen)


def _canonical_parser(name: str) -> str:
    key = str(name).strip().lower() if isinstance(name, str) else name
    if key in PARSERS:
        return key
    for parser, fname in PARSER_FILES.items():
        if key == fname:
            return parser
    raise InputError(f"unknown face-parsing network {name!r}: choose {' or '.join(PARSERS)}")


def part_classes(parser: str, parts: str | Sequence[str] | None = DEFAULT_PARTS) -> tuple[int, ...]:
    """The class indices of network ``parser`` (``parsenet`` or ``bisenet``) that make up ``parts``, ascending."""
    labels = PARSER_LABELS[_canonical_parser(parser)]
    wanted = {label for part in parse_parts(parts) for label in PART_LABELS[part]}
    return tuple(i for i, label in enumerate(labels) if label in wanted)


#----------------------------------------------------------------------------
# ParseNet (PSFRGAN), with facexlib's attribute names


class _ParseConv(nn.Module):
    """Resample (``down``: stride 2; ``up``: nearest x2 first), reflect-pad, convolve, then optionally BatchNorm and
    LeakyReLU(0.2). Keys: ``conv2d.*`` and, with BatchNorm, ``norm.norm.*`` (the convolution then has no bias)."""

    def __init__(self, cin: int, cout: int, resample: str = "none", bn: bool = False, act: bool = False):
        super().__init__()
        self.resample = resample
        self.act = act
        self.pad = 1                                       # 3x3 kernels: ceil((3 - 1) / 2)
        self.conv2d = nn.Conv2d(cin, cout, 3, stride=2 if resample == "down" else 1, bias=not bn)
        self.norm = nn.ModuleDict({"norm": nn.BatchNorm2d(cout)}) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = self.conv2d(F.pad(x, (self.pad,) * 4, mode="reflect"))
        if self.norm is not None:
            x = self.norm["norm"](x)
        if self.act:
            x = F.leaky_relu(x, 0.2)
        return x


class _ParseBlock(nn.Module):
    """``shortcut(x) + conv2(conv1(x))``; the shortcut is a plain 3x3 convolution (same resampling) when the block
    resamples or changes the width, else the identity. ``down`` resamples in ``conv2``, ``up`` in ``conv1``."""

    def __init__(self, cin: int, cout: int, resample: str = "none"):
        super().__init__()
        self.shortcut_func = (_ParseConv(cin, cout, resample) if resample != "none" or cin != cout else None)
        self.conv1 = _ParseConv(cin, cout, "up" if resample == "up" else "none", bn=True, act=True)
        self.conv2 = _ParseConv(cout, cout, "down" if resample == "down" else "none", bn=True, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut_func is None else self.shortcut_func(x)
        return skip + self.conv2(self.conv1(x))


class ParseNet(nn.Module):
    """PSFRGAN's parsing network in facexlib's 512 configuration (``in_size=out_size=512``, ``min_feat_size=32``,
    ``base_ch=64``, ``res_depth=10``, channels clipped to [32, 256]); ``forward`` returns the parsing logits
    ``[N, classes, H, W]`` for RGB input in [-1, 1] whose sides are multiples of 16."""

    def __init__(self, classes: int = NUM_CLASSES, size: int = PARSER_SIZE, min_feat: int = 32, base: int = 64,
                 res_depth: int = 10, ch_range: tuple[int, int] = (32, 256)):
        super().__init__()
        lo, hi = ch_range

        def width(c: int) -> int:
            return max(lo, min(c, hi))

        steps = int(math.log2(size // min(size, min_feat)))
        head = base
        encoder: list[nn.Module] = [_ParseConv(3, base)]
        for _ in range(steps):
            encoder.append(_ParseBlock(width(head), width(head * 2), "down"))
            head *= 2
        self.encoder = nn.Sequential(*encoder)
        self.body = nn.Sequential(*[_ParseBlock(width(head), width(head)) for _ in range(res_depth)])
        decoder: list[nn.Module] = []
        for _ in range(steps):
            decoder.append(_ParseBlock(width(head), width(head // 2), "up"))
            head //= 2
        self.decoder = nn.Sequential(*decoder)
        self.out_img_conv = _ParseConv(width(head), 3)          # the RGB head: loaded, never run
        self.out_mask_conv = _ParseConv(width(head), classes)
        self.multiple = 2 ** steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.encoder(x)
        return self.out_mask_conv(self.decoder(feat + self.body(feat)))


#----------------------------------------------------------------------------
# BiSeNet (face-parsing.PyTorch), with facexlib's attribute names


class _ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class _BasicBlock(nn.Module):
    """ResNet's two 3x3 convolutions with BatchNorm, added to the input (or its 1x1 projection), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
                           if cin != cout or stride != 1 else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class _ResNet18(nn.Module):
    """The ResNet-18 trunk; returns the 1/8, 1/16 and 1/32 features (128, 256, 512 channels)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = nn.Sequential(_BasicBlock(64, 64), _BasicBlock(64, 64))
        self.layer2 = nn.Sequential(_BasicBlock(64, 128, 2), _BasicBlock(128, 128))
        self.layer3 = nn.Sequential(_BasicBlock(128, 256, 2), _BasicBlock(256, 256))
        self.layer4 = nn.Sequential(_BasicBlock(256, 512, 2), _BasicBlock(512, 512))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.layer1(self.maxpool(F.relu(self.bn1(self.conv1(x)))))
        f8 = self.layer2(x)
        f16 = self.layer3(f8)
        return f8, f16, self.layer4(f16)


def _global_mean(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, x.shape[2:])


class _AttentionRefinement(nn.Module):
    """A 3x3 ConvBNReLU whose output is scaled per channel by sigmoid(BN(1x1 conv(its global mean)))."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = _ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(_global_mean(feat))))


class _ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = _ResNet18()
        self.arm16 = _AttentionRefinement(256, 128)
        self.arm32 = _AttentionRefinement(512, 128)
        self.conv_head32 = _ConvBNReLU(128, 128)
        self.conv_head16 = _ConvBNReLU(128, 128)
        self.conv_avg = _ConvBNReLU(512, 128, k=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f8, f16, f32 = self.resnet(x)
        context = F.interpolate(self.conv_avg(_global_mean(f32)), f32.shape[2:], mode="nearest")
        up32 = self.conv_head32(F.interpolate(self.arm32(f32) + context, f16.shape[2:], mode="nearest"))
        up16 = self.conv_head16(F.interpolate(self.arm16(f16) + up32, f8.shape[2:], mode="nearest"))
        return f8, up16                                    # both at 1/8 (the 1/16 map feeds only a training head)


class _FeatureFusion(nn.Module):
    """Concatenate, 1x1 ConvBNReLU, then add a squeeze-excitation-scaled copy of the result to itself."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.convblk = _ConvBNReLU(cin, cout, k=1)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([a, b], dim=1))
        scale = torch.sigmoid(self.conv2(F.relu(self.conv1(_global_mean(feat)))))
        return feat * scale + feat


class _Head(nn.Module):
    def __init__(self, cin: int, mid: int, classes: int):
        super().__init__()
        self.conv = _ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """face-parsing.PyTorch's BiSeNet (ResNet-18 context path); ``forward`` returns the main head's logits
    ``[N, classes, H, W]`` (bilinear, ``align_corners=True``) for ImageNet-normalised RGB input."""

    def __init__(self, classes: int = NUM_CLASSES):
        super().__init__()
        self.cp = _ContextPath()
        self.ffm = _FeatureFusion(256, 256)
        self.conv_out = _Head(256, 256, classes)
        self.conv_out16 = _Head(128, 64, classes)          # training-time auxiliary heads: loaded, never run
        self.conv_out32 = _Head(128, 64, classes)
        self.multiple = 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f8, ctx8 = self.cp(x)
        logits = self.conv_out(self.ffm(f8, ctx8))
        return F.interpolate(logits, x.shape[2:], mode="bilinear", align_corners=True)


def build_parser_network(name: str) -> nn.Module:
    """A freshly initialised network for ``name`` (``parsenet`` or ``bisenet``) in the released configuration."""
    name = _canonical_parser(name)
    return ParseNet() if name == "parsenet" else BiSeNet()


#----------------------------------------------------------------------------
# The parser


class FaceParser(nn.Module):
    """One face-parsing network and what its outputs mean.

    ``name`` is ``parsenet`` or ``bisenet``; ``net`` the network; ``weights_file`` the file its weights came from (a
    string for messages); ``size`` the side the network runs at (512, as trained; tests may choose a smaller
    multiple of 16 / 32); ``batch_size`` how many crops go through the network at once.
    """

    def __init__(self, name: str, net: nn.Module, weights_file: str = "(weights given in memory)",
                 size: int = PARSER_SIZE, batch_size: int = 8):
        super().__init__()
        self.name = _canonical_parser(name)
        self.net = net
        self.weights_file = str(weights_file)
        multiple = int(getattr(net, "multiple", 1))
        if int(size) < multiple or int(size) % multiple:
            raise InputError(f"the {self.name} network runs at sides that are multiples of {multiple}, not {size}")
        self.size = int(size)
        self.batch_size = max(int(batch_size), 1)
        self.labels = PARSER_LABELS[self.name]
        mean, std = _MEAN_STD[self.name]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, size={self.size}, weights_file={self.weights_file!r}"

    def _check(self, crops: torch.Tensor) -> None:
        if not isinstance(crops, torch.Tensor):
            raise InputError(f"face crops must be a tensor [F, 3, S, S], got {type(crops).__name__}")
        if crops.dim() != 4 or crops.shape[1] != 3:
            raise InputError(f"face crops must be RGB [F, 3, S, S] with values in [0, 1], got shape "
                             f"{list(crops.shape)}")
        if not crops.is_floating_point():
            raise InputError(f"face crops must be floating point in [0, 1], got {crops.dtype} (divide 8-bit images "
                             "by 255)")
        if crops.shape[0] and (crops.shape[2] < 1 or crops.shape[3] < 1):
            raise InputError(f"face crops have no pixels: shape {list(crops.shape)}")

    @staticmethod
    def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        if tuple(x.shape[2:]) == (h, w):
            return x
        down = x.shape[2] > h or x.shape[3] > w
        return F.interpolate(x, (h, w), mode="bilinear", align_corners=False, antialias=down)

    def _net_probabilities(self, crops: torch.Tensor) -> torch.Tensor:
        """Softmax over the classes at the network's side: [n, 19, size, size], float32, on the network's device."""
        param = next(self.net.parameters())
        x = self._resize(crops.to(param.device, torch.float32), self.size, self.size)
        x = (x - self.mean.to(x.device, torch.float32)) / self.std.to(x.device, torch.float32)
        logits = self.net(x.to(param.dtype))
        return torch.softmax(logits.float(), dim=1)

    def probabilities(self, crops: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[F, 19, S, S]`` (float32, summing to 1 over the classes, on the crops' device) for
        RGB face crops ``[F, 3, S, S]`` in [0, 1] of any side ``S``; class ``i`` is ``self.labels[i]``.

        The crops are resized (bilinear, antialiased when shrinking) to the network's side, the probabilities back
        to ``S``.
        """
        self._check(crops)
        n, _, h, w = crops.shape
        with torch.inference_mode():
            if n == 0:
                return torch.zeros(0, NUM_CLASSES, h, w, device=crops.device)
            out = [self._resize(self._net_probabilities(crops[i:i + self.batch_size]), h, w).clamp_(0.0, 1.0)
                   for i in range(0, n, self.batch_size)]
            return torch.cat(out).to(crops.device)

    def part_probability(self, crops: torch.Tensor, parts: str | Sequence[str] | None = DEFAULT_PARTS
                         ) -> torch.Tensor:
        """The probability ``[F, S, S]`` in [0, 1] (float32, on the crops' device) that a pixel belongs to one of
        ``parts`` (see :func:`parse_parts`): the sum of their classes' probabilities."""
        self._check(crops)
        index = torch.tensor(part_classes(self.name, parts), dtype=torch.long)
        n, _, h, w = crops.shape
        with torch.inference_mode():
            if n == 0:
                return torch.zeros(0, h, w, device=crops.device)
            out = []
            for i in range(0, n, self.batch_size):
                prob = self._net_probabilities(crops[i:i + self.batch_size])
                face = prob.index_select(1, index.to(prob.device)).sum(dim=1, keepdim=True)
                out.append(self._resize(face, h, w).clamp_(0.0, 1.0)[:, 0])
            return torch.cat(out).to(crops.device)


#----------------------------------------------------------------------------
# Loading


def _state_dict_of(obj: object, path: str) -> dict[str, torch.Tensor]:
    from ..weights_file import tensor_dict

    return tensor_dict(obj, path, "a face-parsing state dict")


def load_parser_state_dict(name: str, sd: dict[str, torch.Tensor], path: str | os.PathLike[str] = "<memory>",
                           device: torch.device | str = "cpu") -> FaceParser:
    """A :class:`FaceParser` for network ``name`` from state dict ``sd``, strictly: exactly the network's keys (the
    BatchNorm counters, unused at inference, may be absent), its shapes, floating-point values that are all finite
    and BatchNorm variances that are not negative. Each refusal is a :class:`CheckpointError` naming ``path``."""
    from ..checkpoints import key_mismatch
    from ..weights_file import check_tensors, shown

    name = _canonical_parser(name)
    with torch.device("meta"):
        net = build_parser_network(name)
    expected = net.state_dict()
    sd = dict(sd)
    given = {k for k in sd if not k.endswith("num_batches_tracked")}
    for k in expected:
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = torch.zeros((), dtype=torch.long)
    problems = key_mismatch(sd, expected)
    if problems:
        other = next(p for p in PARSERS if p != name)
        with torch.device("meta"):
            other_keys = {k for k in build_parser_network(other).state_dict() if not k.endswith("num_batches_tracked")}
        hint = (f" It holds the {other} network: load it as {other!r} (its file is {PARSER_FILES[other]})."
                if given == other_keys else " The file is damaged or another model's.")
        raise CheckpointError(f"{shown(path)}: does not fit the {name} face-parsing network: {problems}.{hint}")
    net.load_state_dict(check_tensors(sd, expected, path, f"{name} face-parsing"), strict=True, assign=True)
    left = [k for k, t in list(net.named_parameters()) + list(net.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{shown(path)}: internal error, tensors left uninitialised after loading: {left[:5]}")
    net = net.eval().requires_grad_(False)
    return FaceParser(name, net, shown(path)).to(device)


def load_parser(name: str, path: str | bytes | os.PathLike[str], device: torch.device | str = "cpu") -> FaceParser:
    """The face parser ``name`` (``parsenet`` or ``bisenet``) with the weights of ``path`` (facexlib's
    ``parsing_parsenet.pth`` / ``parsing_bisenet.pth``, or a ``.safetensors`` of the same tensors), loaded without
    running code from the file; float32 on ``device``, eval mode.

    Raises :class:`InputError` for an unknown ``name``, :class:`~vspbfr_core.errors.ModelNotFoundError` for a
    missing file and :class:`CheckpointError` (naming the file and the tensor) for every other refusal.
    """
    from ..weights_file import as_path, read_weights_file

    name = _canonical_parser(name)
    path = as_path(path)
    obj, _ = read_weights_file(path)
    parser = load_parser_state_dict(name, _state_dict_of(obj, os.fspath(path)), path, device)
    log.debug("loaded face parser %s from %s", name, parser.weights_file)
    return parser


def find_parser_file(name: str, dirs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None
                     ) -> Path:
    """The weights file of face parser ``name`` in the first of ``dirs`` (default: the models folder) that holds it.

    Raises :class:`~vspbfr_core.errors.ModelNotFoundError` naming the file, every folder searched and the
    ``vspbfr download --only parsing`` command that fetches it. Nothing is downloaded automatically.
    """
    from ..paths import find_model_file

    return find_model_file(_canonical_parser(name), dirs)
