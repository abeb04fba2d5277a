"""estimate_defocus / focus_curve / best_focus / patch mode / σ -> µm, with a tiny random HDME-Net."""

import warnings

import dask.array as da
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from napari_linblur.inference import defocus_ops as D
from napari_linblur.models.hrnet import HDMENet, preset_config
from napari_linblur.optics.psf import OpticalSetup, sigma_from_defocus


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    m = HDMENet(width=4, n_branches=3, modules=[1, 1], blocks=1, stem_channels=4, head_channels=8).eval()
    m.task = "defocus"
    return m


def _img(shape=(50, 70), seed=0, dtype="uint16"):
    rng = np.random.default_rng(seed)
    base = gaussian_filter(rng.random(shape), 2) * 2000 + 100
    return rng.poisson(base).astype(dtype)


def test_network_any_multiple_and_presets():
    net = HDMENet(**preset_config("default"))
    assert net.multiple == 8
    out = net(torch.rand(2, 1, 24, 40))
    assert out.shape == (2, 1, 24, 40) and float(out.min()) >= 0
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.rand(1, 1, 20, 20))
    with pytest.raises(ValueError, match="config"):
        preset_config("huge")
    n = sum(p.numel() for p in net.parameters())
    assert n * 4 < 15e6  # float32 weight file under 15 MB


def test_paper_config_constructs_and_runs():
    cfg = preset_config("paper")
    assert cfg["width"] == 48 and cfg["n_branches"] == 4 and cfg["stem_stride"] == 4
    net = HDMENet(**cfg).eval()
    assert net.channels == [48, 96, 192, 384] and net.multiple == 32
    with torch.no_grad():
        out = net(torch.rand(1, 1, 64, 64))
    assert out.shape == (1, 1, 64, 64) and torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [(50, 70), (6, 9), (130, 33)])
def test_estimate_defocus_any_size_numpy(net, shape):
    img = _img(shape)
    s = D.estimate_defocus(img, model=net, device="cpu", tile=32, overlap=8)
    assert s.shape == shape and s.dtype == np.float32
    assert np.isfinite(s).all() and (s >= 0).all()


def test_dtypes_and_constant_images(net):
    for dtype in ("uint8", "uint16", "float32", "float64", "int32"):
        s = D.estimate_defocus(_img((40, 40), dtype=dtype), model=net, device="cpu")
        assert s.dtype == np.float32 and np.isfinite(s).all()
    for const in (np.zeros((32, 32)), np.full((32, 32), 7, np.uint16)):
        s = D.estimate_defocus(const, model=net, device="cpu")
        assert np.isfinite(s).all()
        curve = D.focus_curve(np.stack([const, const]), model=net, device="cpu")
        assert np.isfinite(curve).all()
        for m in D.FOCUS_METHODS[1:]:
            assert np.isfinite(D.focus_curve(np.stack([const, const]), method=m)).all()


def test_dask_is_lazy_one_task_per_plane_and_matches_numpy(net):
    stack = np.stack([_img((40, 48), seed=i) for i in range(3)])
    lazy = D.estimate_defocus(da.from_array(stack, chunks=(3, 20, 48)), model=net, device="cpu", tile=32)
    assert isinstance(lazy, da.Array) and lazy.shape == stack.shape and lazy.numblocks == (3, 1, 1)
    np.testing.assert_allclose(lazy.compute(), D.estimate_defocus(stack, model=net, device="cpu", tile=32),
                               rtol=1e-5, atol=1e-5)
    curve = D.focus_curve(da.from_array(stack, chunks=(1, 40, 48)), model=net, device="cpu", compute=False)
    assert isinstance(curve, da.Array) and curve.shape == (3,) and curve.numblocks == (3,)
    # dask in -> lazy dask out by default too (SPEC §3), nothing computed at call time; compute=True gives numpy
    computed = []
    plane_reads = da.from_array(stack, chunks=(1, 40, 48)).map_blocks(lambda b: computed.append(1) or b)
    for method in ("brenner", "defocus"):
        computed.clear()
        kw = {"model": net, "device": "cpu"} if method == "defocus" else {}
        curve = D.focus_curve(plane_reads, method=method, **kw)
        assert isinstance(curve, da.Array) and computed == []
        now = D.focus_curve(plane_reads, method=method, compute=True, **kw)
        assert isinstance(now, np.ndarray) and computed
        np.testing.assert_allclose(curve.compute(), now)
        np.testing.assert_allclose(now, D.focus_curve(stack, method=method, **kw))


def test_patch_mode_and_grid(net):
    img = _img((70, 100))
    s = D.estimate_defocus(img, model=net, device="cpu", mode="patch", patch_size=32)
    assert s.shape == img.shape
    assert np.allclose(s[:32, :32], s[0, 0]) and np.allclose(s[64:, 96:], s[-1, -1])
    grid = D.defocus_patches(img, model=net, device="cpu", patch_size=32)
    assert grid.shape == (3, 4)
    pix = D.estimate_defocus(img, model=net, device="cpu")
    np.testing.assert_allclose(grid, D.patch_means(pix, 32), rtol=1e-5)
    np.testing.assert_allclose(grid[0, 0], pix[:32, :32].mean(), rtol=1e-5)
    assert D.defocus_patches(np.stack([img, img]), model=net, device="cpu", patch_size=32).shape == (2, 3, 4)


def test_bad_input_errors(net):
    with pytest.raises(ValueError, match="mode"):
        D.estimate_defocus(_img(), model=net, device="cpu", mode="tiles")
    with pytest.raises(ValueError, match="img"):
        D.estimate_defocus(np.zeros(10), model=net, device="cpu")
    with pytest.raises(ValueError, match="NaN"):
        D.estimate_defocus(np.full((16, 16), np.nan), model=net, device="cpu")
    with pytest.raises(TypeError, match="tile"):
        D.estimate_defocus(_img(), model=net, device="cpu", tile=True)
    with pytest.raises(ValueError, match="overlap"):
        D.estimate_defocus(_img(), model=net, device="cpu", tile=32, overlap=32)
    with pytest.raises(ValueError, match="method"):
        D.focus_curve(np.zeros((2, 16, 16)), method="sharpness")
    with pytest.raises(ValueError, match="z-stack"):
        D.best_focus(np.zeros((16, 16)), method="brenner")
    other = HDMENet(width=4, n_branches=2, modules=[1], blocks=1)
    other.task = "deblur"
    with pytest.raises(ValueError, match="defocus"):
        D.estimate_defocus(_img(), model=other, device="cpu")


def test_classical_focus_curve_and_best_focus_shapes():
    sharp = gaussian_filter(np.random.default_rng(1).random((48, 48)), 1.0) * 1000
    sig = [4, 2, 0, 1.5, 3]
    stack = np.stack([gaussian_filter(sharp, s) for s in sig])
    for m in ("variance_of_laplacian", "brenner", "tenengrad", "vollath", "laplacian"):
        curve = D.focus_curve(stack, method=m)
        assert curve.shape == (5,) and int(np.argmax(curve)) == 2, m
    assert D.best_focus(stack, method="brenner") == 2
    four = np.stack([stack, stack[::-1]])
    got = D.best_focus(da.from_array(four, chunks=(1, 1, 48, 48)), method="tenengrad")
    assert got.tolist() == [2, 2] and got.dtype == np.int64


def test_best_focus_warns_when_no_plane_is_sharper():
    # an empty well: every plane ties, and "plane 0" must not read as a found focus
    with pytest.warns(UserWarning, match=r"same focus score \(0 with method='brenner'\).*plane 0"):
        assert D.best_focus(np.full((4, 32, 32), 100.0), method="brenner") == 0
    sharp = gaussian_filter(np.random.default_rng(1).random((48, 48)), 1.0) * 1000
    stack = np.stack([gaussian_filter(sharp, s) for s in (2, 0, 3)])
    both = np.stack([stack, np.zeros_like(stack)])  # the second stack is empty
    with pytest.warns(UserWarning, match=r"stacks \[\(1,\)\]"):
        assert D.best_focus(both, method="tenengrad").tolist() == [1, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert D.best_focus(stack, method="tenengrad") == 1  # a stack with a focus: no warning


def test_signal_mask():
    p = np.zeros((64, 64))
    p[20:40, 20:40] = 500
    p = np.random.default_rng(0).poisson(p + 100).astype(float)
    m = D.signal_mask(p)
    assert m[25:35, 25:35].all() and not m[:10, :10].any()
    assert not D.signal_mask(np.random.default_rng(0).poisson(100, (64, 64)).astype(float)).any()
    for scale in (1e-3, 1e-9, 1e-12, 1e6):  # no absolute unit: the same mask at any intensity scale
        np.testing.assert_array_equal(D.signal_mask(p * scale), m)


def test_sigma_to_defocus_um_roundtrip():
    setup = OpticalSetup(na=0.45, wavelength_um=0.52, pixel_um=0.65, model="gaussian")
    dz = np.array([[2.0, 10.0], [20.0, 30.0]])
    sig = sigma_from_defocus(dz, setup)
    got = D.sigma_to_defocus_um(sig, na=0.45, wavelength_um=0.52, pixel_um=0.65, psf_model="gaussian")
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, dz, rtol=1e-3)
    lazy = D.sigma_to_defocus_um(da.from_array(sig.astype(np.float32), chunks=1), setup=setup)
    np.testing.assert_allclose(lazy.compute(), dz, rtol=1e-3)
    assert D.sigma_to_defocus_um(np.array([0.0]), setup=setup)[0] == 0.0
    with pytest.raises(TypeError, match="setup"):
        D.sigma_to_defocus_um(sig, na=0.45, wavelength_um=0.52, pixel_um=0.65, setup="x")


def test_automatic_tile_is_the_work_minimising_tile_and_channels_last_changes_nothing(net):
    """tile=None picks tiling.auto_tile per plane (overlap 128, tiles up to 576 px); running the network
    channels-last (as estimate_defocus does) gives the plain network's numbers."""
    from napari_linblur.inference.defocus_ops import DEFOCUS_TILE_CAP
    from napari_linblur.inference.normalize import fit_normalization
    from napari_linblur.inference.tiling import NETWORK_OVERLAP, auto_tile, tiled_apply

    img = _img((1200, 260), seed=3)
    auto = D.estimate_defocus(img, model=net, device="cpu", amp="off")
    t = auto_tile(1200, 260, overlap=NETWORK_OVERLAP, multiple=net.multiple, cap=DEFOCUS_TILE_CAP)
    assert 260 <= t <= 576 and t % net.multiple == 0
    x = fit_normalization(img).apply(img)
    with torch.no_grad():
        plain = tiled_apply(lambda b: net(b), x, out_channels=1, tile=t, overlap=NETWORK_OVERLAP,
                            multiple=net.multiple)[0]
    np.testing.assert_allclose(auto, np.maximum(plain, 0), rtol=1e-4, atol=1e-4)
    # an explicit tile is still honoured
    small = D.estimate_defocus(img, model=net, device="cpu", tile=128)
    assert small.shape == auto.shape and np.isfinite(small).all()
    # amp="bf16" (what "auto" picks on CPUs with native bf16) moves the map by far less than a pixel
    assert np.abs(D.estimate_defocus(img, model=net, device="cpu", amp="bf16") - auto).max() < 0.1
    with pytest.raises(ValueError, match="amp"):
        D.estimate_defocus(img, model=net, device="cpu", amp="fp8")


def test_model_retrained_into_the_same_file_is_reloaded(tmp_path):
    """The per-process model cache keys a path on its size and modification time: weights written again into
    the same file (a --resume, a new run with the same --out) are used, never a stale copy."""
    import os

    from defocus_helpers import TINY
    from napari_linblur.models import registry
    from napari_linblur.models.hrnet import HDMENet

    path = tmp_path / "m.safetensors"
    img = _img((40, 48), seed=5)
    maps = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = HDMENet(**TINY)
        registry.save_model(net, path, {"architecture": "HDMENet", "task": "defocus", "config": net.config})
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seed * 10**9))  # a coarse-mtime filesystem
        maps.append(D.estimate_defocus(img, model=path, device="cpu", amp="off"))
        fresh = registry.load_model(path, device="cpu")
        np.testing.assert_allclose(maps[-1], D.estimate_defocus(img, model=fresh, device="cpu", amp="off"),
                                   atol=1e-5)
    assert np.abs(maps[0] - maps[1]).max() > 1e-3
    assert sum(k[1] == str(path) for k in registry._MODEL_CACHE) == 1  # the old weights were dropped


def test_focus_options_are_checked(net):
    stack = np.stack([_img((32, 32), seed=s) for s in range(3)])
    base = D.focus_curve(stack, model=net, device="cpu", amp="off")
    flips = D.focus_curve(stack, model=net, device="cpu", amp="off", tta=8)  # passed on, not ignored
    expect = [-np.median(D.estimate_defocus(p, model=net, device="cpu", amp="off", tta=8)[D.signal_mask(p)]
                        if D.signal_mask(p).any() else D.estimate_defocus(p, model=net, device="cpu", amp="off",
                                                                          tta=8))
              for p in stack]
    np.testing.assert_allclose(flips, expect, atol=1e-5)
    assert np.abs(flips - base).max() > 0
    with pytest.raises(TypeError, match="unexpected keyword argument.*foo"):
        D.focus_curve(stack, model=net, device="cpu", foo=3)
    with pytest.raises(TypeError, match="mode"):
        D.best_focus(stack, model=net, device="cpu", mode="patch")
    with pytest.raises(ValueError, match="batch_size"):
        D.focus_curve(stack, model=net, device="cpu", batch_size=0)
    with pytest.raises(TypeError, match="batch_size"):
        D.focus_curve(stack, model=net, device="cpu", batch_size="2")
    with pytest.raises(ValueError, match="tta"):
        D.focus_curve(stack, model=net, device="cpu", tta=3)
    with pytest.raises(ValueError, match="tta only applies to method='defocus'"):
        D.focus_curve(stack, method="brenner", tta=8)
    with pytest.raises(ValueError, match="model only applies"):
        D.best_focus(stack, method="tenengrad", model=net)
    assert D.focus_curve(stack, method="brenner", camera="auto", tile=None).shape == (3,)  # the defaults are fine


def test_normalized_variance_needs_positive_intensities():
    sharp = gaussian_filter(np.random.default_rng(1).random((48, 48)), 1.0) * 1000 + 200
    stack = np.stack([gaussian_filter(sharp, s) for s in (3, 1, 0, 2)])
    assert D.best_focus(stack, method="normalized_variance") == 2
    assert D.focus_curve(np.full((2, 16, 16), -5.0), method="normalized_variance").tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="positive intensities"):  # background-subtracted: would rank backwards
        D.best_focus(stack - np.median(stack) - 50, method="normalized_variance")


def test_more_bad_input_is_named():
    with pytest.raises(ValueError, match="stack of RGB"):
        D.focus_curve(np.zeros((2, 32, 32, 4)), method="brenner")
    with pytest.raises(ValueError, match="RGB"):
        D.focus_curve(np.zeros((2, 32, 32, 3)), method="brenner")
    with pytest.raises(ValueError, match="plane is empty"):
        D.signal_mask(np.ones((0, 0)))
    nan = np.ones((16, 16))
    nan[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        D.signal_mask(nan)
    with pytest.raises(TypeError, match="complex"):
        D.signal_mask(np.ones((16, 16), complex))
    with pytest.raises(ValueError, match="single 2-D plane"):
        D.signal_mask(np.ones((2, 16, 16)))
    opt = dict(na=0.45, wavelength_um=0.52, pixel_um=0.65)
    with pytest.raises(TypeError, match="sigma_map must be an array"):
        D.sigma_to_defocus_um(None, **opt)
    with pytest.raises(TypeError, match="sigma_map must be an array"):
        D.sigma_to_defocus_um("abc", **opt)
    with pytest.raises(TypeError, match="dtype complex"):
        D.sigma_to_defocus_um(np.ones(3, complex), **opt)
    with pytest.raises(TypeError, match="na must be a real number, got '0.45'"):
        D.sigma_to_defocus_um(np.ones(3), na="0.45", wavelength_um=0.52, pixel_um=0.65)
    assert isinstance(OpticalSetup(na=np.float32(0.5), pixel_um=1).pixel_um, float)


def test_best_focus_names_compute_as_not_its_option():
    stack = np.stack([_img((32, 32), seed=s) for s in range(2)])
    for value in (False, True):
        with pytest.raises(TypeError, match=r"best_focus.*compute.*focus_curve\(stack, compute=False\)"):
            D.best_focus(stack, method="brenner", compute=value)


def test_a_plane_whose_score_cannot_be_computed_never_wins_best_focus():
    """A non-finite σ map (a broken model) scores as the worst plane, not 0, which would be the best -σ."""
    from napari_linblur.inference.defocus_ops import NO_SIGNAL_SIGMA, _PlaneScore

    rng = np.random.default_rng(0)
    planes = [rng.random((32, 32)) for _ in range(3)]
    score = _PlaneScore("defocus", lambda p: np.full(p.shape, np.nan if p is planes[1] else 2.0, np.float32))
    curve = [score(p) for p in planes]
    assert curve[1] == -NO_SIGNAL_SIGMA and curve[0] == curve[2] == -2.0
    assert int(np.argmax(curve)) != 1


def test_a_plane_spanning_most_of_the_float32_range_gets_the_map_of_its_scaled_copy():
    """Values near both ends of float32 (a spread of 5.5e38, beyond float32) are accepted input: the map is that of
    the same plane scaled by a power of two (it used to raise about an internal "scale")."""
    rng = np.random.default_rng(0)
    base = gaussian_filter(rng.random((96, 96)), 3) + rng.normal(0, 0.01, (96, 96))
    base -= base.mean()
    plane = (base / np.abs(base).max() * 3e38).astype(np.float32)
    assert np.ptp(plane.astype(np.float64)) > float(np.finfo(np.float32).max)
    big = D.estimate_defocus(plane, device="cpu", amp="off")
    small = D.estimate_defocus(np.ldexp(plane, -120), device="cpu", amp="off")
    assert np.isfinite(big).all()
    np.testing.assert_allclose(big, small, atol=1e-3)
