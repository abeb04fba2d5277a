"""Tiny defocus configurations shared by the defocus test modules (fast on a 2-core CPU)."""

from napari_linblur.training.defocus import DefocusDataConfig

#: a tiny HDMENet configuration (no normalization layers)
TINY = dict(width=4, n_branches=3, modules=[1, 1], blocks=1, stem_channels=4, head_channels=8, norm="none")


def tiny_data(**kw) -> DefocusDataConfig:
    """A tiny training-data recipe (small pool, crops and batches); keywords override."""
    base = dict(content="mixed", pool_size=3, crop=16, render_size=32, batch_size=2, val_samples=2)
    base.update(kw)
    return DefocusDataConfig(**base)


def save_tiny_model(folder):
    """Save a randomly initialised (seed 0) image-only tiny HDMENet with its card; returns the path."""
    import torch

    from napari_linblur.models import registry
    from napari_linblur.models.hrnet import HDMENet

    torch.manual_seed(0)
    net = HDMENet(**TINY)
    path = folder / "tiny.safetensors"
    registry.save_model(net, path, {"architecture": "HDMENet", "task": "defocus", "config": net.config})
    return path
