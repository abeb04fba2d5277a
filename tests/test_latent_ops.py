"""synthesize_blur / deblur_pair / alpha_from_positions: conventions, any size without seams, numpy and dask,
dtypes and units, bad input; the shipped ae-default model on synthetic data."""

import dask.array as da
import numpy as np
import pytest
import torch

import napari_linblur as nl
from napari_linblur.models import registry
from napari_linblur.models.autoencoder import LinearLatentAE

TINY = {"arch": "resnet", "channels": [8, 16], "latent_channels": 4, "norm": "none", "output": "linear"}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    m = LinearLatentAE(**TINY).eval()
    m.task = "ae"
    return m


def _img(shape, seed=0, dtype=np.uint16):
    rng = np.random.default_rng(seed)
    return (100 + rng.poisson(50, shape)).astype(dtype)


def test_alpha_from_positions_conventions_and_errors():
    assert nl.alpha_from_positions(0.0, 4.0, 8.0) == 0.5
    assert nl.alpha_from_positions(0.0, 2.0, 8.0) == 0.75
    assert nl.alpha_from_positions(16, 14, 12) == 0.5  # z positions in either direction
    assert nl.alpha_from_positions(-16.0, -14.0, -12.0) == pytest.approx(0.5)
    assert nl.alpha_from_positions(-1e308, 0.0, 1e308) == 0.5  # no overflow of c - a
    for args in [(0.0, 8.0, 4.0), (0.0, 0.0, 8.0), (4.0, 4.0, 4.0), (0.0, float("nan"), 1.0)]:
        with pytest.raises(ValueError, match="d_"):
            nl.alpha_from_positions(*args)
    with pytest.raises(TypeError, match="d_b"):
        nl.alpha_from_positions(0.0, "4", 8.0)


def test_endpoints_and_symmetry(tiny):
    a, c = _img((40, 52), 1), _img((40, 52), 2)
    s1 = nl.synthesize_blur(a, c, 1.0, model=tiny)
    d1 = nl.deblur_pair(a, c, 1.0, model=tiny)
    np.testing.assert_allclose(s1, d1, atol=1e-4)  # both reconstruct a
    s0 = nl.synthesize_blur(a, c, 0.0, model=tiny)
    np.testing.assert_allclose(s0, nl.synthesize_blur(c, a, 1.0, model=tiny), atol=1e-4)
    # interpolation is exactly linear in the latent: decode of the mean of latents
    mid = nl.synthesize_blur(a, c, 0.5, model=tiny)
    assert mid.dtype == np.float32 and mid.shape == a.shape
    assert not np.allclose(mid, s1) and not np.allclose(mid, s0)


def test_units_dtypes_and_shapes(tiny):
    a, c = _img((36, 44), 3), _img((36, 44), 4)
    ref = nl.synthesize_blur(a, c, 0.3, model=tiny)
    # shared normalization is inverted: affine changes of the input units carry through exactly
    scaled = nl.synthesize_blur(10.0 * a + 5, 10.0 * c + 5, 0.3, model=tiny)
    np.testing.assert_allclose(scaled, 10 * ref + 5, rtol=1e-4, atol=1e-2)
    for dt in (np.uint8, np.float64, np.float32):
        out = nl.synthesize_blur(a.astype(dt), c.astype(dt), 0.3, model=tiny)
        assert out.dtype == np.float32 and out.shape == a.shape
    stack_a, stack_c = np.stack([a, c, a]), np.stack([c, a, c])
    out = nl.deblur_pair(stack_a, stack_c, 0.5, model=tiny)
    assert out.shape == (3, 36, 44) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], nl.deblur_pair(a, c, 0.5, model=tiny), atol=1e-4)


def test_dask_is_lazy_one_task_per_plane_and_loads_model_once(tiny, monkeypatch, tmp_path):
    path = tmp_path / "m.safetensors"
    registry.save_model(tiny, path, {"architecture": "LinearLatentAE", "task": "ae", "config": tiny.config})
    calls = {"n": 0}
    real = registry.load_model

    def counting(*args, **kw):
        calls["n"] += 1
        return real(*args, **kw)

    monkeypatch.setattr(registry, "load_model", counting)
    a = np.stack([_img((32, 40), i) for i in range(4)])
    c = np.stack([_img((32, 40), 10 + i) for i in range(4)])
    lazy = nl.synthesize_blur(da.from_array(a, chunks=(1, 32, 40)), da.from_array(c, chunks=(2, 32, 40)), 0.4,
                              model=str(path))
    assert isinstance(lazy, da.Array) and lazy.dtype == np.float32 and lazy.numblocks == (4, 1, 1)
    assert calls["n"] == 1
    np.testing.assert_allclose(lazy.compute(), nl.synthesize_blur(a, c, 0.4, model=tiny), atol=1e-4)
    assert calls["n"] == 1  # computing did not reload the model per plane


def test_no_seams_tiled_vs_untiled(tiny):
    a, c = _img((150, 170), 5).astype(np.float32), _img((150, 170), 6).astype(np.float32)
    whole = nl.synthesize_blur(a, c, 0.5, model=tiny, tile=512)
    tiled = nl.synthesize_blur(a, c, 0.5, model=tiny, tile=64, overlap=32)
    inner = (slice(8, -8), slice(8, -8))
    err = np.abs(tiled - whole)[inner]
    assert err.max() < 1e-3 * np.abs(whole).max()


def test_self_ensemble_averages_the_flips_and_rotations(tiny):
    """tta=N is the mean of the model's results on the first N flips/rotations, each undone (no tiling seams)."""
    from napari_linblur.inference.tta import DIHEDRAL

    b, c = _img((48, 64), 7).astype(np.float32), _img((48, 64), 8).astype(np.float32)
    plain = nl.deblur_pair(b, c, 0.5, model=tiny, tile=512)
    assert np.array_equal(plain, nl.deblur_pair(b, c, 0.5, model=tiny, tile=512, tta=1))
    manual = []
    for turns, mirror in DIHEDRAL:
        f = lambda x, t=turns, m=mirror: np.rot90(x[:, ::-1] if m else x, t).copy()  # noqa: E731
        o = np.rot90(nl.deblur_pair(f(b), f(c), 0.5, model=tiny, tile=512), -turns)
        manual.append(o[:, ::-1] if mirror else o)
    for n in (2, 4, 8):
        np.testing.assert_allclose(nl.deblur_pair(b, c, 0.5, model=tiny, tile=512, tta=n),
                                   np.mean(manual[:n], 0), rtol=1e-4, atol=1e-3)
    ens = nl.synthesize_blur(b, c, 0.3, model=tiny, tile=512, tta=8)
    assert ens.shape == b.shape and not np.allclose(ens, nl.synthesize_blur(b, c, 0.3, model=tiny, tile=512))
    for bad in (3, 0, True, 2.0):
        with pytest.raises(ValueError, match="tta"):
            nl.deblur_pair(b, c, 0.5, model=tiny, tta=bad)


def test_bad_input_names_the_argument(tiny):
    a = _img((32, 32))
    cases = [
        (lambda: nl.synthesize_blur(a, _img((32, 30)), 0.5, model=tiny), ValueError, "img_a and img_c"),
        (lambda: nl.synthesize_blur(a, a, 1.5, model=tiny), ValueError, "alpha"),
        (lambda: nl.synthesize_blur(a, a, -0.1, model=tiny), ValueError, "alpha"),
        (lambda: nl.deblur_pair(a, a, 0.0, model=tiny), ValueError, "alpha"),
        (lambda: nl.deblur_pair(a, a, 1.2, model=tiny), ValueError, "alpha"),
        (lambda: nl.synthesize_blur(np.full((32, 32), np.nan), a, 0.5, model=tiny), ValueError, "img_a"),
        (lambda: nl.deblur_pair(a, np.full((32, 32), np.inf), 0.5, model=tiny), ValueError, "img_c"),
        (lambda: nl.synthesize_blur(np.zeros((0, 5)), a, 0.5, model=tiny), ValueError, "img_a"),
        (lambda: nl.deblur_pair(np.zeros((1, 1)), np.zeros((1, 1)), 0.5, model=tiny), ValueError, "img_b"),
        (lambda: nl.synthesize_blur(np.zeros((32, 32, 3)), np.zeros((32, 32, 3)), 0.5, model=tiny), ValueError,
         "RGB"),
        (lambda: nl.synthesize_blur(a, a, "0.5", model=tiny), TypeError, "alpha"),
    ]
    for fn, exc, match in cases:
        with pytest.raises(exc, match=match):
            fn()
    lazy_nan = da.from_array(np.full((2, 32, 32), np.nan), chunks=(1, 32, 32))
    with pytest.raises(ValueError, match="img_b"):
        nl.deblur_pair(lazy_nan, lazy_nan, 0.5, model=tiny).compute()


def test_model_must_be_an_autoencoder(tiny):
    a = _img((32, 32))
    other = LinearLatentAE(**TINY)
    other.task = "defocus"
    with pytest.raises(ValueError, match="'ae' model"):
        nl.synthesize_blur(a, a, 0.5, model=other)


def test_progress_and_cancel(tiny):
    from napari_linblur.inference.tiling import Cancelled

    a = _img((100, 120))
    seen = []
    nl.synthesize_blur(a, a, 0.5, model=tiny, tile=48, overlap=16, progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1]
    with pytest.raises(Cancelled):
        nl.deblur_pair(a, a, 0.5, model=tiny, tile=48, overlap=16, should_stop=lambda: True)
