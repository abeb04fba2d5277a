"""Device selection shared by every model: ``"auto"`` -> CUDA -> MPS -> CPU."""

from __future__ import annotations

from typing import Any

_ACCEPTED = "'auto', 'cpu', 'cuda[:N]' or 'mps'"
#: the device types the models run on (torch parses many more: xla, xpu, meta, vulkan, ...)
_TYPES = ("cpu", "cuda", "mps")


def resolve_device(device: Any = "auto"):
    """Return the :class:`torch.device` to run on.

    Parameters
    ----------
    device : str, torch.device or None
        ``"auto"`` (or ``None``) picks CUDA when available, else Apple MPS, else the CPU. Otherwise ``"cpu"``,
        ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a :class:`torch.device` of those types. An explicit
        ``"cuda"`` on a machine without CUDA raises instead of silently falling back.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        Any other device (``"xla"``, ``"meta"``, ...), or one that is not available here.
    TypeError
        ``device`` is neither a string nor a :class:`torch.device`.

    Examples
    --------
    >>> resolve_device("cpu").type
    'cpu'
    """
    import torch

    if isinstance(device, torch.device):
        dev = device
    elif device is None or (isinstance(device, str) and device.lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    elif isinstance(device, str):
        try:
            dev = torch.device(device.lower())
        except RuntimeError as err:
            raise ValueError(f"device must be {_ACCEPTED}, got {device!r}") from err
    else:
        raise TypeError(f"device must be {_ACCEPTED} or a torch.device, got {type(device).__name__}")
    if dev.type not in _TYPES:
        raise ValueError(f"device must be {_ACCEPTED}, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asked for CUDA but no CUDA GPU is available; use 'auto' or 'cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r} asked for CUDA GPU {dev.index}, but only "
                         f"{torch.cuda.device_count()} are visible; use 'cuda' or 'cuda:0'")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device={device!r} asked for MPS but it is not available; use 'auto' or 'cpu'")
    return dev


def autocast_context(device, amp: str = "off"):
    """Autocast context for ``amp`` in ``{"off", "bf16", "fp16"}`` on ``device``.

    ``fp16`` is only offered on CUDA; ``bf16`` works on CPU (AMX) and recent GPUs.
    """
    import contextlib

    import torch

    amp = (amp or "off").lower()
    if amp == "off":
        return contextlib.nullcontext()
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp={amp!r}; use 'off', 'bf16' or 'fp16'")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp='fp16' needs CUDA; use 'bf16' on the CPU")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_amp(amp: str, device) -> str:
    """``"auto"`` -> ``"bf16"`` on a CPU with native bf16 (AVX512-BF16 / AMX) or a bf16-capable GPU, else ``"off"``.

    bf16 changes the networks' outputs by far less than their errors (measured in docs/results/deblur.md and
    docs/results/defocus.md) and runs 1.4-2x faster on such CPUs.
    """
    import torch

    if amp not in ("auto", "off", "bf16"):
        raise ValueError(f"amp={amp!r}; use 'auto', 'off' or 'bf16'")
    if amp != "auto":
        return amp
    if device.type == "cpu":
        try:
            ok = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # pragma: no cover - very old torch
            ok = False
        return "bf16" if ok else "off"
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "off"


def amp_forward(net, batch, amp: str = "off"):
    """``net(batch)`` in channels-last layout under :func:`autocast_context` (``amp`` already resolved), as float32.

    The one forward pass every tiled model uses: channels-last gives faster CPU convolutions with the same
    numbers, and bf16 autocast (where the hardware has it) more (benchmarks/bench_defocus.py, bench_deblur.py).
    """
    import torch

    with autocast_context(batch.device, amp):
        return net(batch.contiguous(memory_format=torch.channels_last)).float()
