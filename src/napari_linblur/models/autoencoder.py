"""Linear latent autoencoder (paper 000): blur synthesis by latent interpolation, deblurring by extrapolation.

Two named configurations, both built as ``LinearLatentAE(**config)`` (the model card stores the config):

``"paper"``
    The paper's network as its text describes it: five 3x3 stride-2 convolutions (64, 128, 256, 512, 1024 filters)
    each with BatchNorm and LeakyReLU; a symmetric decoder of five 3x3 stride-2 transposed convolutions (512, 256,
    128, 64, 32) plus a sixth 3x3 stride-1 transposed convolution (32), each with BatchNorm and LeakyReLU; a final
    3x3 convolution and a sigmoid. A 128x128 crop gives a 1024x4x4 latent. Size multiple 32.

``"default"``
    Ours, chosen by measurement (``docs/results/latent-ae.md``): fully convolutional, a spatial latent at 1/4 of
    the input resolution with few channels, residual blocks, no normalization layers (BatchNorm's batch
    statistics and GroupNorm's per-tile statistics both make the output depend on what else is in the batch or
    tile, which breaks latent linearity and seam-free tiling), and a *linear* output so that sharper-than-input
    extrapolations are not clipped by a sigmoid.

The latent ``z = encode(x)`` is where the linear relations of the paper are imposed:
``z_b ~ alpha * z_a + (1 - alpha) * z_c`` for planes ``a`` (sharper) ``< b < c`` (blurrier).

Examples
--------
>>> import torch
>>> from napari_linblur.models.autoencoder import LinearLatentAE
>>> m = LinearLatentAE(config="paper").eval()
>>> tuple(m.encode(torch.zeros(1, 1, 128, 128)).shape)
(1, 1024, 4, 4)
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import nn

#: named configurations; ``LinearLatentAE(config=NAME)`` expands to these keyword arguments
CONFIGS: dict[str, dict[str, Any]] = {
    "paper": {
        "arch": "paper",
        "channels": [64, 128, 256, 512, 1024],
        "norm": "batch",
        "output": "sigmoid",
    },
    "default": {
        "arch": "resnet",
        "channels": [16, 32],
        "latent_channels": 8,
        "blocks": 1,
        "norm": "none",
        "output": "linear",
    },
}


#: every key of a configuration, with its accepted form (the messages of :func:`check_config` quote these)
CONFIG_KEYS: dict[str, str] = {
    "arch": "'paper' or 'resnet'",
    "channels": "a non-empty list of positive ints, e.g. [16, 32]",
    "latent_channels": "an int >= 1 (resnet only), e.g. 8",
    "blocks": "an int >= 0 (resnet only: residual blocks per stage), e.g. 1",
    "norm": "'batch', 'group' or 'none'",
    "output": "'sigmoid' or 'linear'",
    "in_channels": "an int >= 1 (1 for a fluorescence plane)",
}


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A checked, completed copy of a :class:`LinearLatentAE` configuration (the keyword arguments after a named
    config is expanded): defaults filled in, every value checked before any layer is built.

    Raises
    ------
    ValueError
        An unknown key, or a value outside its accepted form; the message names the key and the form.

    Examples
    --------
    >>> check_config({"channels": [8, 16]})["latent_channels"]
    16
    >>> check_config({"channels": 16})
    Traceback (most recent call last):
    ...
    ValueError: channels=16: must be a non-empty list of positive ints, e.g. [16, 32]
    """
    unknown = sorted(set(cfg) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; the autoencoder's keys are {sorted(CONFIG_KEYS)}")
    cfg = dict(cfg)
    cfg.setdefault("arch", "resnet")
    cfg.setdefault("in_channels", 1)
    cfg.setdefault("norm", "none")
    cfg.setdefault("output", "linear")
    cfg.setdefault("channels", [32, 48, 64])
    if cfg["arch"] == "resnet":
        cfg.setdefault("blocks", 1)
        cfg.setdefault("latent_channels", 16)

    def bad(key: str) -> ValueError:
        return ValueError(f"{key}={cfg[key]!r}: must be {CONFIG_KEYS[key]}")

    for key, allowed in (("arch", ("paper", "resnet")), ("norm", ("batch", "group", "none")),
                         ("output", ("sigmoid", "linear"))):
        if not isinstance(cfg[key], str) or cfg[key] not in allowed:
            raise bad(key)
    chans = cfg["channels"]
    if not isinstance(chans, (list, tuple)) or not chans or not all(_is_int(c) and c >= 1 for c in chans):
        raise bad("channels")
    cfg["channels"] = [int(c) for c in chans]
    for key, low in (("in_channels", 1), ("latent_channels", 1), ("blocks", 0)):
        if key in cfg and not (_is_int(cfg[key]) and cfg[key] >= low):
            raise bad(key)
        if key in cfg:
            cfg[key] = int(cfg[key])
    if cfg["norm"] == "group":  # GroupNorm(min(8, width), width) needs the width to divide into its groups
        widths = cfg["channels"] + ([max(cfg["channels"][0] // 2, 1)] if cfg["arch"] == "paper" else [])
        if any(w > 8 and w % 8 for w in widths):
            raise ValueError(f"channels={cfg['channels']!r} with norm='group': every width must be at most 8 or a "
                             "multiple of 8 (GroupNorm splits it into min(8, width) groups)")
    return cfg


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    if kind == "group":
        return nn.GroupNorm(min(8, ch), ch)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm={kind!r}; use 'batch', 'group' or 'none'")


class _ResBlock(nn.Module):
    def __init__(self, ch: int, norm: str):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ch, ch, 3, padding=1),
            _norm(norm, ch),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ch, ch, 3, padding=1),
            _norm(norm, ch),
        )
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x):
        return self.act(x + self.body(x))


class LinearLatentAE(nn.Module):
    """Autoencoder whose latent space is regularized to be linear along defocus.

    Parameters
    ----------
    config : {"paper", "default"}, optional
        A named configuration (:data:`CONFIGS`); explicit keyword arguments override its entries.
    arch : {"paper", "resnet"}
        ``"paper"``: the paper's plain strided conv / transposed conv stack. ``"resnet"``: ours.
    channels : list of int
        Encoder widths; ``paper``: one stride-2 conv per entry; ``resnet``: a stem at full resolution with
        ``channels[0]`` at 1/2 resolution then one stride-2 stage per further entry (so the latent is at
        ``1 / 2**len(channels)``); the decoder mirrors it with nearest upsampling + convolutions.
    latent_channels : int, optional
        ``resnet`` only: channels of the latent (a 1x1 projection, no activation, so the latent is linear).
    blocks : int
        ``resnet`` only: residual blocks per stage.
    norm : {"batch", "group", "none"}
        Normalization layers.
    output : {"sigmoid", "linear"}
        Output activation. ``"linear"`` lets extrapolated (sharper) images exceed the input range.
    in_channels : int
        Image channels (1 for a fluorescence plane).

    Examples
    --------
    >>> m = LinearLatentAE(config="default")
    >>> m.multiple, m.config["latent_channels"]
    (4, 8)
    >>> m2 = LinearLatentAE(**m.config)  # constructible from the config stored in a model card
    >>> m2.config == m.config
    True
    """

    def __init__(self, config: str | None = None, **overrides: Any):
        super().__init__()
        if config is not None:
            if config not in CONFIGS:
                raise ValueError(f"config={config!r}; use one of {sorted(CONFIGS)}")
            cfg = dict(CONFIGS[config])
        else:
            cfg = {}
        cfg.update(overrides)
        cfg = check_config(cfg)
        chans = cfg["channels"]
        self.config: dict[str, Any] = cfg
        cin = int(cfg["in_channels"])
        norm = cfg["norm"]
        if cfg["arch"] == "paper":
            enc: list[nn.Module] = []
            prev = cin
            for ch in chans:
                enc += [nn.Conv2d(prev, ch, 3, stride=2, padding=1), _norm(norm, ch), nn.LeakyReLU(0.2)]
                prev = ch
            self.encoder = nn.Sequential(*enc)
            dec: list[nn.Module] = []
            outs = list(reversed(chans[:-1])) + [max(chans[0] // 2, 1)]
            for ch in outs:
                dec += [
                    nn.ConvTranspose2d(prev, ch, 3, stride=2, padding=1, output_padding=1),
                    _norm(norm, ch),
                    nn.LeakyReLU(0.2),
                ]
                prev = ch
            dec += [nn.ConvTranspose2d(prev, prev, 3, stride=1, padding=1), _norm(norm, prev), nn.LeakyReLU(0.2)]
            dec += [nn.Conv2d(prev, cin, 3, padding=1)]
            self.decoder = nn.Sequential(*dec)
            self.multiple = 2 ** len(chans)
        else:
            blocks = int(cfg["blocks"])
            lat = int(cfg["latent_channels"])
            # the stem is already strided: full-resolution residual blocks cost most and help least
            enc = [nn.Conv2d(cin, chans[0], 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            enc += [_ResBlock(chans[0], norm) for _ in range(blocks)]
            prev = chans[0]
            for ch in chans[1:]:
                enc += [nn.Conv2d(prev, ch, 3, stride=2, padding=1), _norm(norm, ch), nn.LeakyReLU(0.2)]
                enc += [_ResBlock(ch, norm) for _ in range(blocks)]
                prev = ch
            enc += [nn.Conv2d(prev, lat, 1)]
            self.encoder = nn.Sequential(*enc)
            dec = [nn.Conv2d(lat, prev, 3, padding=1), nn.LeakyReLU(0.2)]
            dec += [_ResBlock(prev, norm) for _ in range(blocks)]
            for ch in reversed(chans[:-1]):
                dec += [
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(prev, ch, 3, padding=1),
                    _norm(norm, ch),
                    nn.LeakyReLU(0.2),
                ]
                dec += [_ResBlock(ch, norm) for _ in range(blocks)]
                prev = ch
            head = max(prev // 2, 8)
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(prev, head, 3, padding=1), nn.LeakyReLU(0.2)]
            dec += [nn.Conv2d(head, cin, 3, padding=1)]
            self.decoder = nn.Sequential(*dec)
            self.multiple = 2 ** len(chans)
        self.sigmoid = cfg["output"] == "sigmoid"

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent ``z`` of images ``x`` ``(B, C, H, W)`` (H, W multiples of :attr:`multiple`)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images from latents (sigmoid or linear output, see ``output``)."""
        y = self.decoder(z)
        return torch.sigmoid(y) if self.sigmoid else y

    def forward(
        self, x: torch.Tensor, alpha: torch.Tensor | None = None, *, need_zb: bool = True, extrapolate: bool = False
    ):
        """Reconstruction ``decode(encode(x))``; or, with ``alpha``, the triplet pass used in training.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, C, H, W)`` images; with ``alpha``: ``(B, 3, C, H, W)`` triplets ``(a, b, c)``.
        alpha : torch.Tensor, optional
            ``(B,)`` interpolation weights, ``z'_b = alpha * z_a + (1 - alpha) * z_c``.
        need_zb : bool
            Also encode ``b`` and decode ``z_b`` (baseline and direct losses need them).
        extrapolate : bool
            Also decode the extrapolation ``z_b / alpha - (1 - alpha) / alpha * z_c`` (key ``extrap_a``).

        Returns
        -------
        torch.Tensor or dict
            The reconstruction, or a dict with ``z_a, z_c, z_interp, rec_a, rec_c, interp_b`` (and ``z_b``,
            ``rec_b``). Going through ``forward`` keeps DistributedDataParallel's gradient hooks working.
        """
        if alpha is None:
            return self.decode(self.encode(x))
        bsz = x.shape[0]
        idx = [0, 1, 2] if need_zb else [0, 2]
        flat = x[:, idx].reshape((bsz * len(idx),) + tuple(x.shape[2:]))
        z = self.encode(flat)
        z = z.reshape((bsz, len(idx)) + tuple(z.shape[1:]))
        z_a, z_c = z[:, 0], z[:, -1]
        al = alpha.to(z.dtype).reshape((bsz,) + (1,) * (z.dim() - 2))
        z_interp = al * z_a + (1 - al) * z_c
        lat = [z_a, z_c, z_interp] + ([z[:, 1]] if need_zb else [])
        if extrapolate:
            if not need_zb:
                raise ValueError("extrapolate=True needs need_zb=True")
            lat.append(z[:, 1] / al - (1 - al) / al * z_c)
        rec = self.decode(torch.cat(lat)).reshape((len(lat), bsz) + tuple(x.shape[2:]))
        out = {"z_a": z_a, "z_c": z_c, "z_interp": z_interp, "rec_a": rec[0], "rec_c": rec[1], "interp_b": rec[2]}
        if need_zb:
            out["z_b"] = z[:, 1]
            out["rec_b"] = rec[3]
        if extrapolate:
            out["extrap_a"] = rec[4]
        return out
