"""DRBNet-style single-image defocus deblurring network (Ruan et al., CVPR 2022, adapted to microscopy).

A multi-scale encoder–decoder. The encoder works at full, 1/2, 1/4 and 1/8 resolution; the decoder climbs back
and, at **each** of the four scales, a :class:`DynamicResidualBlock` refines the current image estimate:

1. it takes the current estimate and the decoder features of that scale;
2. it predicts a per-pixel ``k x k`` kernel ``K`` (normalised to **zero sum**) and a residual image ``r``;
3. it updates ``estimate <- estimate + K ⊛ estimate + r`` (``⊛``: per-pixel filtering, each pixel with its own
   kernel).

Because ``K`` sums to zero, ``δ + K`` (the effective filter applied to the estimate) has unit DC gain: the update
is DRBNet's ``estimate' = filtered(estimate) + residual`` with a unit-gain kernel that, unlike a softmax kernel,
may have negative lobes and can therefore *sharpen* (a softmax kernel can only blur). The estimate is then
upsampled (bilinear) to the next finer scale, where the input's own band-pass detail of that scale (a Laplacian
pyramid level) is added back, so the coarse estimates never lose what the input already has. With the heads
initialised to zero the network starts as the identity (output == input), which makes the short CPU training
budget go into learning the deblurring itself.

The input is one channel, in the shared normalization (``inference.normalize``); spatial sides must be a
multiple of :attr:`DRBNet.multiple` (8) — the public operation pads and crops via ``inference.tiling``.

Examples
--------
>>> import torch
>>> net = DRBNet(widths=(8, 8, 8), kernel_size=3)
>>> x = torch.rand(1, 1, 32, 24)
>>> net(x).shape
torch.Size([1, 1, 32, 24])
>>> bool(torch.allclose(net(x), x, atol=1e-5))  # identity at initialisation
True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CONFIGS", "DRBNet", "DynamicResidualBlock", "dynamic_update", "head_channels", "shrink"]

#: full-scale dynamic block: per-pixel kernels placed by depth-to-space, or one kernel per 2x2 cell
FULL_KERNELS = ("subpixel", "shared")
#: decoder upsampling: bilinear then 3x3 conv (the first models), or conv at the coarse scale then bilinear
UPS = ("upsample_conv", "conv_upsample")

#: named configurations; ``default`` is sized for CPU speed (see docs/results/deblur.md)
_LEAN = {"widths": (16, 32, 48), "kernel_size": (3, 3, 5, 5), "blocks": 1, "full_kernel": "shared",
         "up": "conv_upsample"}
CONFIGS: dict[str, dict] = {
    "tiny": {"widths": (8, 8, 8), "kernel_size": 3, "blocks": 1},
    "fast": {"widths": (8, 16, 32), "kernel_size": (3, 5, 5, 5), "blocks": 1},
    # 3x3 kernels at 1/2 resolution, one full-scale kernel per 2x2 cell (:func:`shared_subpixel_update`) and the
    # decoder's convolutions at the coarse scale: ~0.6x the time of ``classic`` for the same quality once trained
    # (docs/results/deblur.md); "lean" is the name the shipped model's training command used
    "default": dict(_LEAN),
    "lean": dict(_LEAN),
    # the first models' layout (deblur-default until the lean model): per-pixel full-scale kernels, 5x5 at 1/2
    "classic": {"widths": (16, 32, 48), "kernel_size": (3, 5, 5, 5), "blocks": 1},
    # the lean default with 12 channels at 1/2 resolution, made from a trained lean model by ``shrink``
    # (``linblur train deblur --init deblur-default --config speed``); the classic layout shrunk this way was ~15 %
    # faster than classic at the same quality (docs/results/deblur.md)
    "speed": {"widths": (12, 32, 48), **{k: v for k, v in _LEAN.items() if k != "widths"}},
    "large": {"widths": (32, 64, 96), "kernel_size": 5, "blocks": 2},
}


def _pad(x: torch.Tensor, k: int) -> torch.Tensor:
    return _reflect_pad(x, k // 2)


def _reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    return F.pad(x, (pad, pad, pad, pad), mode="reflect" if min(x.shape[-2:]) > pad else "replicate")


def head_channels(k: int) -> int:
    """Channels of a dynamic block's head for ``k x k`` kernels: ``k*k`` logits, gain, residual; 1 when ``k == 1``.

    A one-tap zero-sum kernel is identically zero, so with ``k == 1`` the block predicts only the residual.
    """
    return k * k + 2 if k > 1 else 1


def dynamic_update(estimate: torch.Tensor, head_out: torch.Tensor, k: int) -> torch.Tensor:
    """``estimate + K ⊛ estimate + residual`` from a head output ``(B, k*k + 2, H, W)`` (logits, gain, residual).

    With ``k == 1`` the head output is the residual alone (``(B, 1, H, W)``, :func:`head_channels`).

    ``K = gain · (softmax(logits) − 1/k²)`` is zero-sum, so ``K ⊛ e = gain · (Σ_j p_j e_j − mean_k(e))``. The
    softmax is folded into the sum over taps ("online" form: ``Σ_j w_j e_j / Σ_j w_j`` with
    ``w_j = exp(l_j − max_j l_j)``), so neither the ``k*k`` probability maps nor a ``k*k``-fold copy of the image
    is ever materialised, and everything runs on contiguous fp32 planes. It equals the explicit softmax form
    within 1e-5 (``tests/test_deblur.py``) and took the network from 1.6-1.8x to 1.1-1.3x the time of 10
    Richardson-Lucy iterations on a CPU (docs/results/deblur.md).
    """
    if k == 1:  # a one-tap zero-sum kernel is zero: the block predicts only the residual
        return estimate.float() + head_out.float()
    kk = k * k
    out = head_out.to(torch.float32, memory_format=torch.contiguous_format)
    logits, gain, residual = out[:, :kk], out[:, kk : kk + 1], out[:, kk + 1 :]
    est = estimate.to(torch.float32, memory_format=torch.contiguous_format)
    _, _, h, w = est.shape
    xp = _pad(est, k)
    peak = logits.amax(1, keepdim=True)
    num = torch.zeros_like(est)
    den = torch.zeros_like(est)
    box = torch.zeros_like(est)
    for j in range(kk):
        dy, dx = divmod(j, k)
        shifted = xp[:, :, dy : dy + h, dx : dx + w]
        wj = torch.sub(logits[:, j : j + 1], peak).exp_()
        den += wj
        num.addcmul_(wj, shifted)
        box += shifted
    return est + gain * (num / den - box / kk) + residual


def shared_subpixel_update(estimate: torch.Tensor, head_out: torch.Tensor, k: int) -> torch.Tensor:
    """Full-resolution dynamic update with per-pixel ``k x k`` kernels predicted at half resolution.

    ``head_out`` is ``(B, k*k + 1 + 4, H/2, W/2)``: the logits and gain of one kernel per 2x2 cell (shared by its
    four pixels) and the residual of each of the four pixels (depth-to-space order). The estimate ``(B, 1, H, W)``
    is filtered at full resolution, ``e' = e + K ⊛ e + r`` with ``K`` zero-sum as in :func:`dynamic_update`, but the
    work runs on the four sub-pixel phases of the image at half resolution, so no full-resolution kernel maps are
    ever made (the CPU speed bar, docs/results/deblur.md).
    """
    kk, r = k * k, k // 2
    out = head_out.to(torch.float32, memory_format=torch.contiguous_format)
    logits, gain, residual = out[:, :kk], out[:, kk : kk + 1], out[:, kk + 1 :]
    est = estimate.to(torch.float32, memory_format=torch.contiguous_format)
    b, _, h, w = est.shape
    h2, w2 = h // 2, w // 2
    rp = r + r % 2  # even padding, so that the padded image's phases line up with the output's
    xp = _reflect_pad(est, rp)
    phases = F.pixel_unshuffle(xp, 2)  # phase (a, b) of the padded image is channel 2a + b
    box = F.pixel_unshuffle(F.avg_pool2d(xp[:, :, rp - r : rp + h + r, rp - r : rp + w + r], k, stride=1), 2)
    peak = logits.amax(1, keepdim=True)
    den = torch.zeros_like(peak)
    num = torch.zeros((b, 4, h2, w2), dtype=est.dtype, device=est.device)
    for j in range(kk):
        dy, dx = divmod(j, k)
        wj = torch.sub(logits[:, j : j + 1], peak).exp_()
        den += wj
        for py in range(2):
            yy = py + dy - r + rp
            for px in range(2):
                xx = px + dx - r + rp
                c = 2 * (yy % 2) + xx % 2
                num[:, 2 * py + px : 2 * py + px + 1].addcmul_(
                    wj, phases[:, c : c + 1, yy // 2 : yy // 2 + h2, xx // 2 : xx // 2 + w2])
    upd = F.pixel_unshuffle(est, 2) + gain * (num / den - box) + residual
    return F.pixel_shuffle(upd, 2)


class ResBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection."""

    def __init__(self, ch: int):
        super().__init__()
        self.c1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.c2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c2(F.leaky_relu(self.c1(x), 0.1))


class DynamicResidualBlock(nn.Module):
    """Predict a per-pixel zero-sum kernel and a residual from (estimate, features); update the estimate.

    ``estimate' = estimate + K ⊛ estimate + r``; ``K = s · (softmax(logits) − 1/k²)`` with a learned per-pixel
    gain ``s`` (so it can blur or sharpen); heads start at zero, i.e. the block starts as the identity.
    """

    def __init__(self, ch: int, kernel_size: int = 5):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        self.k = kernel_size
        self.body = nn.Conv2d(ch + 1, ch, 3, padding=1)
        self.head = nn.Conv2d(ch, head_channels(kernel_size), 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, estimate: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.body(torch.cat([estimate.to(feats.dtype), feats], 1)), 0.1)
        return dynamic_update(estimate, self.head(h), self.k)


class DRBNet(nn.Module):
    """Multi-scale encoder–decoder with dynamic residual blocks at 1/8, 1/4, 1/2 and full scale.

    Parameters
    ----------
    widths : sequence of 3 int
        Feature channels at 1/2, 1/4 and 1/8 resolution. The full-resolution image enters by space-to-depth
        (``pixel_unshuffle``, 2x2 pixels -> 4 channels at 1/2 resolution), and the full-scale block predicts its
        per-pixel kernels and residual at 1/2 resolution and places them back by depth-to-space
        (``pixel_shuffle``) — sub-pixel convolution, which keeps every convolution off the full-resolution grid
        (the CPU speed bar: faster than 10 Richardson–Lucy iterations).
    kernel_size : int or sequence of 4 int
        Side of the per-pixel kernels (odd); one for all scales or one per scale (full, 1/2, 1/4, 1/8).
    blocks : int
        Residual blocks per encoder/decoder level.
    full_kernel : {"subpixel", "shared"}
        Full-scale dynamic block: ``"subpixel"`` predicts each pixel's kernel (4 per 1/2-resolution cell, placed by
        depth-to-space); ``"shared"`` predicts one kernel per 2x2 cell and a residual per pixel and filters the
        four sub-pixel phases at 1/2 resolution (:func:`shared_subpixel_update`) -- no full-resolution kernel
        maps, the cheaper of the two on a CPU.
    up : {"upsample_conv", "conv_upsample"}
        Decoder step to the finer level: bilinear upsampling then a 3x3 convolution (the first models), or the
        convolution at the coarse level then upsampling its (fewer) output channels -- about 4x less work.

    Notes
    -----
    ``forward(x)`` returns the full-resolution estimate; ``forward(x, return_all=True)`` returns the list of
    estimates at 1/8, 1/4, 1/2 and full scale (used by the multi-scale training loss).
    """

    multiple = 8

    def __init__(self, widths=(16, 32, 48), kernel_size=(3, 5, 5, 5), blocks: int = 1, full_kernel: str = "subpixel",
                 up: str = "upsample_conv"):
        super().__init__()
        if full_kernel not in FULL_KERNELS:
            raise ValueError(f"full_kernel must be one of {FULL_KERNELS}, got {full_kernel!r}")
        if up not in UPS:
            raise ValueError(f"up must be one of {UPS}, got {up!r}")
        self.full_kernel, self.up_order = full_kernel, up
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"widths must be 3 positive integers (1/2, 1/4, 1/8 resolution), got {widths}")
        ks = (int(kernel_size),) * 4 if isinstance(kernel_size, (int, float)) else tuple(int(k) for k in kernel_size)
        if len(ks) != 4 or any(k < 1 or k % 2 == 0 for k in ks):
            raise ValueError(f"kernel_size must be an odd int or 4 odd ints (one per scale), got {kernel_size}")
        if blocks < 1:
            raise ValueError(f"blocks must be >= 1, got {blocks}")
        self.widths, self.kernel_size, self.blocks = widths, ks, int(blocks)
        w1, w2, w3 = widths
        self.inc = nn.Conv2d(4, w1, 3, padding=1)
        self.enc = nn.ModuleList([nn.Sequential(*[ResBlock(w) for _ in range(blocks)]) for w in widths])
        self.down = nn.ModuleList([nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(widths[:-1], widths[1:])])
        self.up = nn.ModuleList([nn.Conv2d(b, a, 3, padding=1) for a, b in zip(widths[:-1], widths[1:])])
        self.dec = nn.ModuleList([nn.Sequential(*[ResBlock(w) for _ in range(blocks)]) for w in widths])
        # dynamic residual blocks at 1/2, 1/4, 1/8 (index 0..2) and the full-scale one (sub-pixel)
        self.drb = nn.ModuleList([DynamicResidualBlock(w, k) for w, k in zip(widths, ks[1:])])
        k0 = ks[0]
        self.full_body = nn.Conv2d(w1 + 4, w1, 3, padding=1)
        n_head = 4 * head_channels(k0) if full_kernel == "subpixel" else head_channels(k0) + 3
        self.full_head = nn.Conv2d(w1, n_head, 3, padding=1)
        nn.init.zeros_(self.full_head.weight)
        nn.init.zeros_(self.full_head.bias)

    def _full_scale_block(self, est: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Dynamic residual block at full scale: kernels and residual predicted at 1/2, placed by pixel shuffle."""
        h = F.leaky_relu(self.full_body(torch.cat([feats, F.pixel_unshuffle(est, 2).to(feats.dtype)], 1)), 0.1)
        k0 = self.kernel_size[0]
        if self.full_kernel == "shared" and k0 > 1:
            return shared_subpixel_update(est, self.full_head(h), k0)
        head = self.full_head(h).to(torch.float32, memory_format=torch.contiguous_format)
        return dynamic_update(est, F.pixel_shuffle(head, 2), k0)

    def forward(self, x: torch.Tensor, return_all: bool = False):
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"DRBNet expects (B, 1, H, W), got {tuple(x.shape)}")
        if x.shape[-1] % self.multiple or x.shape[-2] % self.multiple:
            raise ValueError(f"DRBNet needs H and W to be multiples of {self.multiple}, got {tuple(x.shape[-2:])}")
        # input pyramid (average pooling): full, 1/2, 1/4, 1/8
        pyr = [x]
        for _ in range(3):
            pyr.append(F.avg_pool2d(pyr[-1], 2))
        feats = []
        h = F.leaky_relu(self.inc(F.pixel_unshuffle(x, 2)), 0.1)
        for lvl in range(3):  # 1/2, 1/4, 1/8
            h = self.enc[lvl](h)
            feats.append(h)
            if lvl < 2:
                h = F.leaky_relu(self.down[lvl](h), 0.1)
        estimates = []
        est = pyr[3]
        d = feats[2]
        for lvl in (2, 1, 0):  # decoder at 1/8, 1/4, 1/2
            if lvl < 2:
                if self.up_order == "upsample_conv":
                    d = F.leaky_relu(self.up[lvl](F.interpolate(d, scale_factor=2, mode="bilinear",
                                                                align_corners=False)), 0.1)
                else:  # convolve at the coarse scale, then upsample the fewer channels (about 4x cheaper)
                    d = F.interpolate(F.leaky_relu(self.up[lvl](d), 0.1), scale_factor=2, mode="bilinear",
                                      align_corners=False)
                d = d + feats[lvl]
                est = self._upsample_estimate(est, pyr, lvl + 1)
            d = self.dec[lvl](d)
            est = self.drb[lvl](est, d)
            estimates.append(est)
        est = self._upsample_estimate(est, pyr, 0)
        estimates.append(self._full_scale_block(est, d))
        return estimates if return_all else estimates[-1]

    @staticmethod
    def _upsample_estimate(est: torch.Tensor, pyr: list, lvl: int) -> torch.Tensor:
        """Upsample the estimate to pyramid level ``lvl`` and add the input's band-pass detail of that level."""
        # up(est) + (pyr[lvl] - up(pyr[lvl + 1])) with one upsampling (bilinear upsampling is linear)
        return pyr[lvl] + F.interpolate(est - pyr[lvl + 1], scale_factor=2, mode="bilinear", align_corners=False)

    def config(self) -> dict:
        """Constructor arguments (for the model card)."""
        cfg = {"widths": list(self.widths), "kernel_size": list(self.kernel_size), "blocks": self.blocks}
        if (self.full_kernel, self.up_order) != ("subpixel", "upsample_conv"):  # older cards have neither key
            cfg.update(full_kernel=self.full_kernel, up=self.up_order)
        return cfg


def shrink(model: DRBNet, widths=None, kernel_size=None) -> DRBNet:
    """A smaller DRBNet initialised from a trained one (structured pruning), to fine-tune for speed.

    Supported changes: fewer channels at 1/2 resolution (``widths[0]``; the kept channels are those of the
    1/2-resolution residual stream with the largest weight norm written into it) and smaller per-pixel kernels at
    any scale (the inner taps' logits are kept). The 1/4 and 1/8 widths and ``blocks`` must stay the same.

    Examples
    --------
    >>> big = DRBNet(widths=(8, 8, 8), kernel_size=(3, 5, 5, 5))
    >>> small = shrink(big, widths=(6, 8, 8), kernel_size=(3, 3, 5, 5))
    >>> small.widths, small.kernel_size
    ((6, 8, 8), (3, 3, 5, 5))
    """
    widths = tuple(int(w) for w in (widths or model.widths))
    ks = kernel_size if kernel_size is not None else model.kernel_size
    ks = (int(ks),) * 4 if isinstance(ks, (int, float)) else tuple(int(k) for k in ks)
    if widths[1:] != model.widths[1:] or widths[0] > model.widths[0]:
        raise ValueError(f"shrink can only reduce the 1/2-resolution width; {model.widths} -> {widths}")
    if any(n > o for n, o in zip(ks, model.kernel_size)):
        raise ValueError(f"shrink can only reduce kernel sizes; {model.kernel_size} -> {ks}")
    out = DRBNet(widths=widths, kernel_size=ks, blocks=model.blocks, full_kernel=model.full_kernel, up=model.up_order)
    src = {k: v.detach().clone() for k, v in model.state_dict().items()}
    w0 = model.widths[0]
    # importance of each 1/2-resolution stream channel: norm of everything that writes into the stream
    writers = ["inc.weight", "up.0.weight"] + [k for k in src if (k.startswith("enc.0.") or k.startswith("dec.0."))
                                               and k.endswith("c2.weight")]
    score = sum(src[k].flatten(1).abs().sum(1) for k in writers)
    keep = torch.sort(torch.argsort(score, descending=True)[: widths[0]]).values
    level0_in = {"enc.0", "dec.0", "down.0", "drb.0.head", "full_head"}
    level0_out = {"inc", "enc.0", "dec.0", "up.0", "drb.0.body", "full_body"}
    new = {}
    for name in out.state_dict():
        v = src[name]
        prefix = name.rsplit(".", 1)[0]
        if any(prefix == p or prefix.startswith(p + ".") for p in level0_out) and v.shape[0] == w0:
            v = v[keep]
        if v.ndim == 4:
            if any(prefix == p or prefix.startswith(p + ".") for p in level0_in) and v.shape[1] == w0:
                v = v[:, keep]
            elif prefix == "drb.0.body":  # input: [estimate, features]
                v = v[:, torch.cat([torch.zeros(1, dtype=torch.long), keep + 1])]
            elif prefix == "full_body":  # input: [features, space-to-depth estimate (4)]
                v = v[:, torch.cat([keep, torch.arange(w0, w0 + 4)])]
        new[name] = v
    # smaller kernels: keep the logits of the inner taps, then gain and residual
    for lvl, (k_old, k_new) in enumerate(zip(model.kernel_size[1:], ks[1:])):
        if k_new < k_old:
            rows = _kept_head_rows(k_old, k_new)
            for p in ("weight", "bias"):
                new[f"drb.{lvl}.head.{p}"] = new[f"drb.{lvl}.head.{p}"][rows]
    if ks[0] < model.kernel_size[0]:
        k_old, k_new = model.kernel_size[0], ks[0]
        per = _kept_head_rows(k_old, k_new)
        if model.full_kernel == "subpixel":
            # full_head channels are (k*k + 2) groups of 4 sub-pixels (pixel_shuffle order: channel c*4 + sub)
            rows = (per[:, None] * 4 + torch.arange(4)[None]).flatten()
        else:  # shared: k*k logits and a gain per 2x2 cell, then the 4 sub-pixel residuals
            kept = per[:-1] if k_new > 1 else per[:0]
            rows = torch.cat([kept, k_old * k_old + 1 + torch.arange(4)])
        for p in ("weight", "bias"):
            new[f"full_head.{p}"] = new[f"full_head.{p}"][rows]
    out.load_state_dict(new, strict=True)
    return out.eval()


def _kept_head_rows(k_old: int, k_new: int) -> torch.Tensor:
    """Head rows kept when a ``k_old`` kernel shrinks to ``k_new``: the inner taps' logits, gain, residual."""
    if k_old == 1:
        return torch.tensor([0])
    if k_new == 1:  # residual only (:func:`head_channels`)
        return torch.tensor([k_old * k_old + 1])
    off = (k_old - k_new) // 2
    taps = [(dy + off) * k_old + dx + off for dy in range(k_new) for dx in range(k_new)]
    return torch.tensor(taps + [k_old * k_old, k_old * k_old + 1])
