"""HDME-Net: an HRNet-style network estimating a per-pixel defocus map (paper 001, §3.3–3.4).

The network keeps a high-resolution branch for its whole depth and adds lower-resolution branches stage by
stage (HRNet: Sun et al. 2019; HigherHRNet: Cheng et al. 2020). After every *HR module* (a few residual blocks
per branch) all branches exchange information: every output branch receives the sum of all input branches,
brought to its resolution by strided 3x3 convolutions (down) or a 1x1 convolution + bilinear upsampling (up).
The head concatenates all branches at the highest resolution (HRNetV2), upsamples to the input resolution when
the stem downsampled, and regresses one channel: σ of the equivalent Gaussian PSF in pixels, made non-negative
by a softplus.

Two configurations (:data:`PRESETS`):

``paper``
    The HRNet-W48 layout the paper builds on: stride-4 stem (two stride-2 convolutions, 64 channels), a stage of
    four bottleneck blocks (256 channels), then stages with 2, 3 and 4 branches of widths 48/96/192/384 holding
    1, 4 and 3 HR modules of four basic blocks each, and a HigherHRNet-like decoder (transposed convolutions
    back to full resolution). About 65 M parameters — a GPU model.
``default``
    Ours, chosen by measurement for a 2-core CPU and a weight file ≤ 15 MB: no stem downsampling (the first
    branch works at full resolution, where defocus lives), 4 branches of widths 12/24/48/96, HR modules
    (1, 1, 1), two basic blocks per branch, BatchNorm (0.78 M parameters, 3.1 MB). Chosen by measurement
    (``python benchmarks/bench_defocus.py --design``, see ``docs/results/defocus.md``): width 12 trains about
    1.75x faster per step than width 16 on one CPU thread; a first run without normalization collapsed to a
    constant output, so BatchNorm is kept and its running statistics are re-estimated after training
    (:func:`napari_linblur.training.defocus.recalibrate_batchnorm`).

Any input whose sides are multiples of :attr:`HDMENet.multiple` runs; the public operations pad and crop
through :func:`napari_linblur.inference.tiling.tiled_apply`, so users never need to care.

Examples
--------
>>> import torch
>>> net = HDMENet(**PRESETS["default"])
>>> net(torch.zeros(1, 1, 32, 32)).shape
torch.Size([1, 1, 32, 32])
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["HDMENet", "PRESETS", "preset_config"]

#: named configurations; ``HDMENet(**PRESETS[name])`` builds them
PRESETS: dict[str, dict] = {
    "paper": {
        "width": 48,
        "n_branches": 4,
        "modules": [1, 4, 3],
        "blocks": 4,
        "stem_stride": 4,
        "stem_channels": 64,
        "stem_bottlenecks": 4,
        "head_channels": 64,
        "max_sigma": None,
        "norm": "batch",
    },
    "default": {
        "width": 12,
        "n_branches": 4,
        "modules": [1, 1, 1],
        "blocks": 2,
        "stem_stride": 1,
        "stem_channels": 12,
        "stem_bottlenecks": 0,
        "head_channels": 24,
        "max_sigma": None,
        "norm": "batch",
    },
}


def preset_config(name: str) -> dict:
    """A copy of the constructor keywords of a named configuration (``'paper'`` or ``'default'``).

    Examples
    --------
    >>> preset_config("default")["width"]
    12
    """
    if name not in PRESETS:
        raise ValueError(f"config={name!r} is not a known HDMENet configuration; use one of {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


NORMS = ("batch", "group", "none")


def _bn(c: int, norm: str = "batch") -> nn.Module:
    """Normalization layer after a convolution: BatchNorm (HRNet), GroupNorm, or none."""
    if norm == "batch":
        return nn.BatchNorm2d(c)
    if norm == "group":
        return nn.GroupNorm(4 if c % 4 == 0 else 1, c)
    return nn.Identity()


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet basic block)."""

    def __init__(self, c: int, norm: str = "batch"):
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=bias)
        self.bn1 = _bn(c, norm)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=bias)
        self.bn2 = _bn(c, norm)
        if norm == "none":  # start close to identity: residual branches small
            nn.init.zeros_(self.conv2.bias)
            with torch.no_grad():
                self.conv2.weight.mul_(0.1)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 residual bottleneck (HRNet stage 1), ``c_in`` -> ``4 * c_mid`` channels."""

    def __init__(self, c_in: int, c_mid: int, norm: str = "batch"):
        super().__init__()
        c_out = 4 * c_mid
        bias = norm == "none"
        self.conv1 = nn.Conv2d(c_in, c_mid, 1, bias=bias)
        self.bn1 = _bn(c_mid, norm)
        self.conv2 = nn.Conv2d(c_mid, c_mid, 3, padding=1, bias=bias)
        self.bn2 = _bn(c_mid, norm)
        self.conv3 = nn.Conv2d(c_mid, c_out, 1, bias=bias)
        self.bn3 = _bn(c_out, norm)
        self.skip = (None if c_in == c_out
                     else nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=bias), _bn(c_out, norm)))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.skip is None else self.skip(x)))


def _down(c_in: int, c_out: int, times: int, norm: str = "batch") -> nn.Sequential:
    """``times`` stride-2 3x3 convolutions (ReLU between, not after the last)."""
    layers: list[nn.Module] = []
    for k in range(times):
        last = k == times - 1
        c = c_out if last else c_in
        layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=norm == "none"), _bn(c, norm)]
        if not last:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class HRModule(nn.Module):
    """Parallel residual branches followed by an all-to-all multi-resolution fusion."""

    def __init__(self, channels: list[int], blocks: int, norm: str = "batch"):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(c, norm) for _ in range(blocks)]) for c in channels
        )
        n = len(channels)
        self.fuse = nn.ModuleList()
        for j in range(n):
            row = nn.ModuleList()
            for i in range(n):
                if i == j:
                    row.append(nn.Identity())
                elif i > j:  # lower resolution -> up
                    row.append(nn.Sequential(nn.Conv2d(channels[i], channels[j], 1, bias=norm == "none"),
                                             _bn(channels[j], norm)))
                else:  # higher resolution -> down
                    row.append(_down(channels[i], channels[j], j - i, norm))
            self.fuse.append(row)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [b(x) for b, x in zip(self.branches, xs)]
        out = []
        for j, row in enumerate(self.fuse):
            acc = xs[j]
            for i, f in enumerate(row):
                if i == j:
                    continue
                y = f(xs[i])
                if i > j:
                    y = F.interpolate(y, size=xs[j].shape[-2:], mode="bilinear", align_corners=False)
                acc = acc + y
            out.append(F.relu(acc))
        return out


class HDMENet(nn.Module):
    """HRNet-style per-pixel defocus (σ) estimator.

    Parameters
    ----------
    width : int
        Channels of the full-resolution branch; branch ``i`` has ``width * 2**i``.
    n_branches : int
        Number of parallel resolutions (1, 1/2, 1/4, ... of the stem output).
    modules : list of int
        HR modules per stage; stage ``s`` (``s = 1 .. n_branches - 1``) adds branch ``s``. Length
        ``n_branches - 1``.
    blocks : int
        Basic residual blocks per branch in every HR module.
    stem_stride : {1, 2, 4}
        Downsampling of the stem (4 in HRNet; 1 keeps the first branch at the input resolution).
    stem_channels : int
        Channels of the stem.
    stem_bottlenecks : int
        Bottleneck blocks after the stem (HRNet stage 1; 0 = none).
    head_channels : int
        Channels of the regression head.
    max_sigma : float or None
        Optional upper clamp of the output (None = unbounded softplus).
    in_channels : {1, 2}
        1: the normalized image. 2: the image and its camera-noise channel
        (:func:`napari_linblur.inference.noise_input.noise_channel`).

    Notes
    -----
    Input ``(B, in_channels, H, W)``: normalized intensities (and the noise channel); output ``(B, 1, H, W)`` σ in
    pixels, ``>= 0``. H and W must be multiples of :attr:`multiple`.

    Examples
    --------
    >>> import torch
    >>> net = HDMENet(width=4, n_branches=2, modules=[1], blocks=1)
    >>> net.multiple
    2
    >>> float(net(torch.rand(2, 1, 16, 16)).min()) >= 0
    True
    """

    def __init__(
        self,
        width: int = 16,
        n_branches: int = 4,
        modules: list[int] | tuple[int, ...] = (1, 1, 1),
        blocks: int = 2,
        stem_stride: int = 1,
        stem_channels: int = 16,
        stem_bottlenecks: int = 0,
        head_channels: int = 32,
        max_sigma: float | None = None,
        norm: str = "batch",
        in_channels: int = 1,
    ):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        modules = [int(m) for m in modules]
        if n_branches < 1:
            raise ValueError(f"n_branches must be >= 1, got {n_branches}")
        if len(modules) != n_branches - 1:
            raise ValueError(f"modules must list one count per added branch ({n_branches - 1}), got {modules}")
        if stem_stride not in (1, 2, 4):
            raise ValueError(f"stem_stride must be 1, 2 or 4, got {stem_stride}")
        if int(in_channels) not in (1, 2):
            raise ValueError(f"in_channels must be 1 (image) or 2 (image and camera-noise map), got {in_channels}")
        self.in_channels = int(in_channels)
        self.config = {
            "width": int(width), "n_branches": int(n_branches), "modules": modules, "blocks": int(blocks),
            "stem_stride": int(stem_stride), "stem_channels": int(stem_channels),
            "stem_bottlenecks": int(stem_bottlenecks), "head_channels": int(head_channels),
            "max_sigma": None if max_sigma is None else float(max_sigma), "norm": norm,
        }
        if self.in_channels != 1:  # cards of image-only models stay as they were
            self.config["in_channels"] = self.in_channels
        bias = norm == "none"
        self.multiple = int(stem_stride) * 2 ** (n_branches - 1)
        self.max_sigma = max_sigma

        # stem
        stem: list[nn.Module] = []
        c = self.in_channels
        n_down = {1: 0, 2: 1, 4: 2}[stem_stride]
        if n_down == 0:
            stem += [nn.Conv2d(c, stem_channels, 3, padding=1, bias=bias), _bn(stem_channels, norm),
                     nn.ReLU(inplace=True)]
        for _ in range(n_down):
            stem += [nn.Conv2d(c, stem_channels, 3, stride=2, padding=1, bias=bias), _bn(stem_channels, norm),
                     nn.ReLU(inplace=True)]
            c = stem_channels
        c = stem_channels
        for _ in range(stem_bottlenecks):
            stem.append(Bottleneck(c, stem_channels, norm))
            c = 4 * stem_channels
        self.stem = nn.Sequential(*stem)

        # stage 1 input: the full-resolution branch
        self.to_branch0 = nn.Sequential(nn.Conv2d(c, width, 3, padding=1, bias=bias), _bn(width, norm),
                                        nn.ReLU(inplace=True))
        channels = [width]
        self.transitions = nn.ModuleList()
        self.stages = nn.ModuleList()
        for s in range(1, n_branches):
            c_new = width * 2**s
            self.transitions.append(
                nn.Sequential(nn.Conv2d(channels[-1], c_new, 3, stride=2, padding=1, bias=bias), _bn(c_new, norm),
                              nn.ReLU(inplace=True))
            )
            channels = channels + [c_new]
            self.stages.append(nn.Sequential(*[HRModule(channels, blocks, norm) for _ in range(modules[s - 1])]))
        self.channels = channels

        # head: concat all branches at the highest resolution, then upsample to the input resolution
        total = sum(channels)
        head: list[nn.Module] = [nn.Conv2d(total, head_channels, 1, bias=bias), _bn(head_channels, norm),
                                 nn.ReLU(inplace=True)]
        for _ in range(n_down):  # HigherHRNet-like transposed-convolution decoder
            head += [nn.ConvTranspose2d(head_channels, head_channels, 4, stride=2, padding=1, bias=bias),
                     _bn(head_channels, norm), nn.ReLU(inplace=True), BasicBlock(head_channels, norm)]
        head += [nn.Conv2d(head_channels, head_channels, 3, padding=1), nn.ReLU(inplace=True),
                 nn.Conv2d(head_channels, 1, 1)]
        self.head = nn.Sequential(*head)
        nn.init.constant_(self.head[-1].bias, 5.0)  # start near the middle of the σ range (softplus(5) ≈ 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """σ map (pixels, ``>= 0``) of a ``(B, C, H, W)`` batch: normalized images (and their noise maps)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"HDMENet expects a (B, {self.in_channels}, H, W) tensor, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise ValueError(f"HDMENet needs H and W divisible by {self.multiple}, got {h}x{w}; pad the input")
        xs = [self.to_branch0(self.stem(x))]
        for trans, stage in zip(self.transitions, self.stages):
            xs = xs + [trans(xs[-1])]
            for module in stage:
                xs = module(xs)
        size = xs[0].shape[-2:]
        feats = torch.cat([xs[0]] + [F.interpolate(t, size=size, mode="bilinear", align_corners=False)
                                     for t in xs[1:]], dim=1)
        out = F.softplus(self.head(feats))
        if out.shape[-2:] != (h, w):  # odd stem arithmetic never happens for multiples, but stay exact
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
        if self.max_sigma is not None:
            out = out.clamp(max=float(self.max_sigma))
        return out
