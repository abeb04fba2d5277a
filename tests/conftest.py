"""Shared fixtures for the napari plugin tests (kept minimal and napari-focused).

GUI tests need a display: run them under Xvfb (``xvfb-run -a pytest tests/test_napari*.py``); offscreen Qt has no
OpenGL for napari's canvas. ``make_napari_viewer`` and ``qtbot`` come from napari's and pytest-qt's plugins.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def isolated_plugin_settings(tmp_path, monkeypatch):
    """Plugin settings (device, tile, models) read from and written to this test's tmp folder only."""
    from napari import settings as napari_settings

    monkeypatch.setattr(napari_settings, "_CFG_PATH", str(tmp_path / "settings.yaml"), raising=False)
    napari_settings._clear_plugin_settings_cache()
    yield
    napari_settings._clear_plugin_settings_cache()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Small models of the three shipped architectures, saved with the registry (safetensors + card).

    GUI tests check the wiring (the widget's output equals the public operation called with the same model),
    not model quality, so random weights of tiny configurations keep them fast on a 2-core CPU.
    """
    import torch

    from napari_linblur.models.drbnet import CONFIGS as DRBNET_CONFIGS
    from napari_linblur.models.registry import build_model, save_model

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny-models")
    configs = {
        "defocus": ("HDMENet", {"width": 4, "n_branches": 2, "modules": [1], "blocks": 1, "stem_stride": 1,
                                "stem_channels": 4, "stem_bottlenecks": 0, "head_channels": 8, "max_sigma": None}),
        "defocus_noise": ("HDMENet", {"width": 4, "n_branches": 2, "modules": [1], "blocks": 1, "stem_channels": 4,
                                      "head_channels": 8, "in_channels": 2, "norm": "none"}),
        "deblur": ("DRBNet", dict(DRBNET_CONFIGS["tiny"])),
        "ae": ("LinearLatentAE", {"arch": "resnet", "channels": [8, 16], "latent_channels": 4, "blocks": 1,
                                  "norm": "group"}),
    }
    out = {}
    for task, (arch, config) in configs.items():
        card = {"architecture": arch, "task": task.split("_")[0], "config": config}
        model = build_model(card)
        out[task] = str(save_model(model, root / f"{task}-tiny.safetensors", card))
    return out


@pytest.fixture
def viewer(make_napari_viewer, isolated_plugin_settings):
    """A real napari viewer (under Xvfb) with this test's own plugin settings."""
    return make_napari_viewer()


@pytest.fixture(scope="module")
def scheduler():
    """An in-process cluster of one single-threaded worker, used as a ``--scheduler`` (no dashboard: no port clash
    with another dask on the machine). Modules that need more threads define their own."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0",
                      scheduler_kwargs={"dashboard": False}) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for the module (2-core CI: oversubscribed threads are ~10x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

