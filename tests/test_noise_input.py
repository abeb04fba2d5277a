"""Noise-aware defocus models: camera noise line, its estimate from one plane, the noise channel, training with
``--noise-input map`` (from an image-only model) and inference with ``camera='auto'`` or a calibration."""

import json
import warnings

import numpy as np
import pytest
import torch

from defocus_helpers import TINY, save_tiny_model
from defocus_helpers import tiny_data as _data
from napari_linblur.cli.main import main
from napari_linblur.inference.noise_input import noise_channel, resolve_camera
from napari_linblur.models import registry
from napari_linblur.models.hrnet import HDMENet
from napari_linblur.optics.noise import (
    camera_variance_model,
    estimate_variance_model,
    noise_std_map,
    poisson_gaussian,
)
from napari_linblur.training.defocus import DefocusTask


def test_camera_variance_model_is_the_poisson_gaussian_variance():
    a, b = camera_variance_model(gain=2.0, offset=100.0, read_noise=3.0)
    photons = 500.0
    adu = poisson_gaussian(np.full((256, 256), photons), gain=2.0, read_noise=3.0, offset=100.0, rng=0)
    assert float(adu.var()) == pytest.approx(a * float(adu.mean()) + b, rel=0.03)
    for bad in (dict(gain=0.0, offset=0, read_noise=1), dict(gain=1, offset=np.nan, read_noise=1),
                dict(gain=1, offset=0, read_noise=-1)):
        with pytest.raises(ValueError):
            camera_variance_model(**bad)


@pytest.mark.parametrize("gain,read,offset", [(0.5, 1.0, 100.0), (2.0, 3.0, 90.0)])
def test_estimated_noise_line_matches_the_camera_on_smooth_content(gain, read, offset):
    """On smooth (blurred) content the estimate from one plane is close to the camera's true noise std."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(1)
    content = gaussian_filter(rng.random((192, 192)), 12)
    content = (content - content.min()) / np.ptp(content)
    photons = 50 + 1500 * content
    adu = poisson_gaussian(photons, gain=gain, read_noise=read, offset=offset, rng=rng)
    true = camera_variance_model(gain, offset, read)
    est = estimate_variance_model(adu)
    for v in np.percentile(adu, [10, 50, 90]):
        ratio = np.sqrt((est[0] * v + est[1]) / (true[0] * v + true[1]))
        assert 0.8 < ratio < 1.25, (v, ratio)
    std = noise_std_map(adu, *est)
    assert std.shape == adu.shape and std.dtype == np.float32 and float(std.min()) > 0


def test_a_large_plane_is_estimated_in_strips_with_the_camera_line():
    """A plane of several strips (about 1 Mpx each, so memory stays bounded) gives the camera's line, the same for
    its uint16 and float64 forms."""
    rng = np.random.default_rng(2)
    ramp = np.tile(np.linspace(50, 2000, 1536), (1536, 1))
    adu = np.round(np.clip(poisson_gaussian(ramp, gain=2.0, read_noise=3.0, offset=100.0, rng=rng), 0, 65535))
    a, b = estimate_variance_model(adu.astype(np.uint16))
    assert (a, b) == estimate_variance_model(adu)
    true = camera_variance_model(2.0, 100.0, 3.0)
    for v in np.percentile(adu, [10, 50, 90]):
        assert 0.8 < np.sqrt((a * v + b) / (true[0] * v + true[1])) < 1.25
    # the two halves of the plane (each within fewer strips) find the same line within the noise of the estimate
    top = estimate_variance_model(adu[:768].astype(np.uint16))
    assert top[0] == pytest.approx(a, rel=0.1)


def test_estimate_noise_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        estimate_variance_model(np.zeros((2, 40, 40)))
    with pytest.raises(ValueError, match="NaN"):
        estimate_variance_model(np.full((40, 40), np.nan))
    with pytest.raises(ValueError, match="too small"):
        estimate_variance_model(np.zeros((12, 40)))
    # a constant plane: a defined, positive variance (no NaN, no division by zero)
    a, b = estimate_variance_model(np.full((64, 64), 7.0))
    assert np.isfinite([a, b]).all() and a * 7.0 + b > 0


def test_resolve_camera_forms_and_errors():
    assert resolve_camera("auto") is None and resolve_camera(None) is None
    assert resolve_camera((2.0, 100.0, 1.0)) == camera_variance_model(2.0, 100.0, 1.0)
    assert resolve_camera({"gain": 2, "offset": 100, "read_noise": 1}) == camera_variance_model(2.0, 100.0, 1.0)
    for bad in ("calibrated", {"gain": 1, "offset": 0}, {"gain": 1, "offset": 0, "read_noise": 1, "qe": 1},
                (1.0, 2.0), ("a", 1, 1), {"gain": -1, "offset": 0, "read_noise": 1}, 3.0):
        with pytest.raises(ValueError, match="gain|camera"):
            resolve_camera(bad)


def test_noise_channel_reads_the_photon_level():
    """More photons per unit of the normalized image -> lower relative noise -> a lower channel value."""
    rng = np.random.default_rng(0)
    flat = np.ones((64, 64))
    chans = []
    for photons in (100.0, 3000.0):
        adu = poisson_gaussian(flat * photons, gain=1.0, read_noise=1.0, offset=100.0, rng=rng)
        for line in (None, camera_variance_model(1.0, 100.0, 1.0)):
            ch = noise_channel(adu, scale=photons, line=line)
            assert ch.shape == adu.shape and ch.dtype == np.float32 and np.isfinite(ch).all()
            assert float(ch.min()) >= -3 and float(ch.max()) <= 3
            chans.append(float(np.median(ch)))
    # 30x the photons: sqrt(30) less relative noise, log10 -> about 0.74 lower, with either source of the line
    assert chans[0] - chans[2] == pytest.approx(0.74, abs=0.1)
    assert chans[1] - chans[3] == pytest.approx(0.74, abs=0.1)
    # tiny planes (too small for the block estimate) still give a finite channel
    assert np.isfinite(noise_channel(np.full((5, 7), 3.0), 1.0)).all()


def test_model_input_channels():
    net = HDMENet(**TINY, in_channels=2)
    assert net.config["in_channels"] == 2 and "in_channels" not in HDMENet(**TINY).config
    assert net(torch.rand(1, 2, 16, 16)).shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        net(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="in_channels"):
        HDMENet(**TINY, in_channels=3)


def test_noise_map_batches():
    task = DefocusTask(TINY, _data(noise_input="map", noise_estimated=0.0), seed=2)
    x, s = task.batch(0)
    assert x.shape == (2, 2, 16, 16) and s.shape == (2, 1, 16, 16) and torch.isfinite(x).all()
    assert task.model_config["in_channels"] == 2 and task.build_model().in_channels == 2
    # estimated vs exact channel: the same draws, so the image channel is identical and only the noise differs
    x_est, _ = DefocusTask(TINY, _data(noise_input="map", noise_estimated=1.0), seed=2).batch(0)
    torch.testing.assert_close(x_est[:, 0], x[:, 0], rtol=0, atol=0)
    assert not torch.equal(x_est[:, 1], x[:, 1])
    # the image-only recipe is unchanged by the option's existence (same images, no extra draws)
    x1, _ = DefocusTask(TINY, _data(), seed=2).batch(0)
    assert x1.shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="noise_input"):
        _data(noise_input="gain").validate()
    with pytest.raises(ValueError, match="noise_estimated"):
        _data(noise_input="map", noise_estimated=1.5).validate()
    with pytest.raises(ValueError, match="in_channels=1"):
        DefocusTask({**TINY, "in_channels": 2}, _data())


@pytest.fixture(scope="module")
def image_only_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("m"))


@pytest.fixture(scope="module")
def noise_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("noise") / "run"
    assert main(["train", "defocus", "--content", "shuffle", "--out", str(out), "--steps", "2", "--width", "4",
                 "--noise-input", "map", "--crop", "16", "--render-size", "32", "--batch-size", "2",
                 "--pool-size", "2", "--device", "cpu", "--no-progress", "--threads", "1", "--bn-batches", "0"]) == 0
    return out / "model.safetensors"


def test_noise_input_from_an_image_only_model(image_only_model, tmp_path):
    """--init of an image-only model: the noise channel's weights start at zero, so the outputs start unchanged."""
    task = DefocusTask(dict(TINY), _data(noise_input="map"), init=str(image_only_model))
    net = task.build_model().eval()
    src = registry.load_model(image_only_model, device="cpu")
    x, _ = task.batch(0)
    with torch.no_grad():
        torch.testing.assert_close(net(x), src(x[:, :1]))
    assert task.card()["init"]["input_added"].startswith("noise channel")
    out = tmp_path / "cont"
    assert main(["train", "defocus", "--content", "shuffle", "--out", str(out), "--steps", "1", "--init",
                 str(image_only_model), "--noise-input", "map", "--crop", "16", "--render-size", "32",
                 "--batch-size", "2", "--pool-size", "2", "--device", "cpu", "--no-progress", "--threads", "1",
                 "--bn-batches", "0"]) == 0
    card = registry.load_model(out / "model.safetensors", device="cpu").card
    assert card["config"] == {**src.card["config"], "in_channels": 2} and "input_added" in card["init"]


def test_trained_noise_model_card_and_inference(noise_model, image_only_model, tmp_path):
    import napari_linblur as nl

    net = registry.load_model(noise_model, device="cpu")
    card = net.card
    assert net.in_channels == 2 and card["config"]["in_channels"] == 2
    assert card["data"]["recipe"]["noise_input"] == "map" and "noise_input" in card
    rng = np.random.default_rng(3)
    img = poisson_gaussian(np.full((40, 48), 300.0) + 200 * rng.random((40, 48)), gain=1.0, read_noise=2.0,
                           offset=100.0, rng=rng).astype(np.float32)
    auto = nl.estimate_defocus(img, model=str(noise_model), device="cpu")
    cal = nl.estimate_defocus(img, model=str(noise_model), device="cpu",
                              camera={"gain": 1.0, "offset": 100.0, "read_noise": 2.0})
    far = nl.estimate_defocus(img, model=str(noise_model), device="cpu", camera=(8.0, 100.0, 2.0))
    for m in (auto, cal, far):
        assert m.shape == img.shape and m.dtype == np.float32 and np.isfinite(m).all()
    assert not np.allclose(cal, far)  # the calibration reaches the network
    # lazy stacks and the focus curve take the camera too
    import dask.array as da

    stack = np.stack([img, img])
    lazy = nl.estimate_defocus(da.from_array(stack, chunks=(1, 40, 48)), model=str(noise_model), device="cpu",
                               camera=(1.0, 100.0, 2.0))
    np.testing.assert_allclose(lazy.compute()[0], cal, rtol=1e-5, atol=1e-5)
    curve = nl.focus_curve(stack, model=str(noise_model), device="cpu", camera=(1.0, 100.0, 2.0))
    assert curve.shape == (2,) and np.isfinite(curve).all()
    # a calibration whose offset lies above most of the data (another bit depth, binning or camera) predicts no noise
    # there: said, not silently read as a noise-free image; a fitting one is not warned about
    with pytest.warns(UserWarning, match="calibration does not fit this image.*offset"):
        nl.estimate_defocus(img, model=str(noise_model), device="cpu", camera=(1.0, 5000.0, 2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nl.estimate_defocus(img, model=str(noise_model), device="cpu", camera=(1.0, 100.0, 2.0))
        # a noise-free detector (read noise 0) on a plane whose background sits at the offset: no misfit
        dark = np.full((40, 48), 100.0, np.float32)
        dark[10:20, 10:20] += 300
        nl.estimate_defocus(dark, model=str(noise_model), device="cpu", camera=(1.0, 100.0, 0.0))
    # a bad calibration is a clear error before any work; an image-only model ignores the camera
    with pytest.raises(ValueError, match="camera"):
        nl.estimate_defocus(img, model=str(noise_model), device="cpu", camera={"gain": 1.0})
    np.testing.assert_array_equal(
        nl.estimate_defocus(img, model=str(image_only_model), device="cpu", camera=(8.0, 100.0, 2.0)),
        nl.estimate_defocus(img, model=str(image_only_model), device="cpu"))


def test_defocus_map_cli_camera_options(noise_model, tmp_path, capsys):
    import tifffile
    import zarr

    rng = np.random.default_rng(0)
    tif = tmp_path / "s.tif"
    tifffile.imwrite(tif, rng.poisson(200, (2, 40, 48)).astype(np.uint16) + 100)
    out = tmp_path / "m.zarr"
    base = ["defocus-map", str(tif), str(out), "--model", str(noise_model), "--device", "cpu", "--workers", "1"]
    assert main([*base, "--camera-gain", "1"]) == 2  # partial calibration: a clear error, nothing written
    assert "--read-noise" in capsys.readouterr().err and not out.exists()
    assert main([*base, "--camera-gain", "1", "--camera-offset", "100", "--read-noise", "2"]) == 0
    assert zarr.open_group(str(out), mode="r").attrs["linblur"]["camera"] == {"gain": 1.0, "offset": 100.0,
                                                                              "read_noise": 2.0}


def test_evaluate_adds_calibrated_rows_for_noise_models(noise_model, tmp_path):
    out = tmp_path / "ev"
    assert main(["evaluate", "defocus", "--model", f"noise={noise_model}", "--n-images", "1", "--size", "48",
                 "--no-through-focus", "--no-bbbc006", "--no-baselines", "--device", "cpu", "--out", str(out)]) == 0
    table = json.loads((out / "defocus_eval.json").read_text())["spatially_varying"]["shuffle"]
    assert set(table) == {"noise", "noise, calibrated camera"}
    assert all(0 <= r["all"]["mae_px"] < 10 for r in table.values())


def _scaled_pair(seed=4, shape=(96, 96)):
    """A noisy uint16 plane of smooth content and the same plane as float64 in [0, 1]."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    content = gaussian_filter(rng.random(shape), 4)
    content = (content - content.min()) / np.ptp(content)
    u16 = poisson_gaussian(100 + 1500 * content, gain=1.0, read_noise=2.0, offset=100.0, rng=rng)
    u16 = np.clip(np.round(u16), 0, 65535).astype(np.uint16)
    return u16, u16.astype(np.float64) / float(u16.max())


@pytest.mark.parametrize("k", [1e-4, 1e-6, 1e-9, 1e-20, 1e20])
def test_noise_channel_is_scale_invariant(k):
    """No absolute floor: the channel of an image scaled to [0, k] is that of the uint16 original."""
    from napari_linblur.inference.normalize import fit_normalization

    u16, unit = _scaled_pair()
    ref = noise_channel(u16, fit_normalization(u16).scale)
    img = unit * k
    ch = noise_channel(img, fit_normalization(img).scale)
    np.testing.assert_allclose(ch, ref, atol=2e-3)
    # the estimated line scales with the square of the intensity
    a0, b0 = estimate_variance_model(unit)
    a, b = estimate_variance_model(img)
    assert (a / k, b / k**2) == pytest.approx((a0, b0), rel=1e-3, abs=1e-9)


@pytest.mark.parametrize("c", [2.0**-80, 1e-25, 1e25, 2.0**80])
def test_noise_std_map_is_scale_equivariant(c):
    """The map of a plane and line scaled by (c, c, c²) is c times the map: no float32 under/overflow of the
    variance, no absolute floor (exact for powers of two)."""
    u16, _ = _scaled_pair()
    x = u16.astype(np.float64)
    ref = noise_std_map(x, 1.0, 4.0)
    out = noise_std_map(x * c, 1.0 * c, 4.0 * c * c)
    assert out.dtype == np.float32 and np.isfinite(out).all() and float(out.min()) > 0
    np.testing.assert_allclose(out / np.float32(c), ref, rtol=1e-5)
    if np.log2(c).is_integer():
        np.testing.assert_array_equal(out, ref * np.float32(c))
    # a zero line on a constant plane: a positive std relative to the plane, not an absolute one
    flat = noise_std_map(np.full((8, 8), 3.0 * c), 0.0, 0.0)
    assert np.all(flat > 0) and float(flat.max()) < 1e-4 * 3.0 * c
    with pytest.raises(ValueError, match="scale"):
        noise_channel(x, 0.0)


@pytest.mark.parametrize("k", [1e-6, 1e-9])
def test_estimate_defocus_is_scale_invariant(tiny_models, k):
    """A noise-aware model gives the same map for the same image at any intensity scale."""
    import napari_linblur as nl

    u16, unit = _scaled_pair()
    model = tiny_models["defocus_noise"]
    ref = nl.estimate_defocus(u16, model=model, device="cpu", amp="off")
    out = nl.estimate_defocus(unit * k, model=model, device="cpu", amp="off")
    np.testing.assert_allclose(out, ref, atol=1e-3 * max(1.0, float(np.abs(ref).max())))


def test_faint_images_are_normalized_by_their_own_range(tiny_models):
    """A purely relative constant-image test: an image of values ~1e-13 is not taken for a constant one."""
    import napari_linblur as nl
    from napari_linblur.inference.normalize import fit_normalization

    _, unit = _scaled_pair()
    ref_norm = fit_normalization(unit)
    for k in (1e-13, 1e-30):
        n = fit_normalization(unit * k)
        assert n.scale == pytest.approx(ref_norm.scale * k, rel=1e-6)
        np.testing.assert_allclose(n.apply(unit * k), ref_norm.apply(unit), atol=1e-5)
    model = tiny_models["deblur"]
    ref = nl.deblur(unit, method="network", model=model, device="cpu", amp="off")
    out = nl.deblur(unit * 1e-13, method="network", model=model, device="cpu", amp="off")
    np.testing.assert_allclose(out / 1e-13, ref, atol=1e-4)
    # constant images (whatever their scale) still get a safe scale
    for value in (0.0, 1e-13, 7.0):
        n = fit_normalization(np.full((8, 8), value))
        assert n.scale > 0 and np.all(n.apply(np.full((8, 8), value)) == 0)


def test_a_large_pedestal_on_a_wide_dtype_leaves_the_map_and_focus_curve_unchanged():
    """float64 and 64-bit integer planes are normalized in float64, but the noise channel (and the signal mask of the
    focus score) cast the raw plane to float32 first: on a 1e8-1e9 pedestal their contrast was in steps of 8-64 and
    the σ map read 1.6-5 px higher. Both now work relative to the plane's offset, in float64."""
    import napari_linblur as nl
    from napari_linblur.inference.defocus_ops import signal_mask

    rng = np.random.default_rng(5)
    clean = 200 + 1500 * (np.add.outer(np.sin(np.arange(96) / 3.0), np.cos(np.arange(96) / 5.0)) > 0.4)
    stack = np.stack([poisson_gaussian(clean.astype(float), gain=1.0, read_noise=2.0, offset=100.0, rng=rng)
                      for _ in range(2)]).astype(np.uint16)
    ref = nl.estimate_defocus(stack, device="cpu", amp="off")
    curve = nl.focus_curve(stack, device="cpu", amp="off")
    for dtype in (np.int64, np.float64):
        wide = (stack.astype(np.int64) + 10**9).astype(dtype)
        np.testing.assert_allclose(nl.estimate_defocus(wide, device="cpu", amp="off"), ref, atol=1e-4)
        np.testing.assert_allclose(nl.focus_curve(wide, device="cpu", amp="off"), curve, atol=1e-5)
        np.testing.assert_array_equal(signal_mask(wide[0]), signal_mask(stack[0]))
        # a camera calibration moves with the data: the same map as for the data without the pedestal
        cal = nl.estimate_defocus(stack[0], device="cpu", amp="off", camera=(1.0, 100.0, 2.0))
        moved = nl.estimate_defocus(wide[0], device="cpu", amp="off", camera=(1.0, 100.0 + 1e9, 2.0))
        np.testing.assert_allclose(moved, cal, atol=1e-4)
    # the deblurring network, too, reads a wide plane in float64: within float32's own rounding of the result
    out = nl.deblur(stack[0].astype(np.int64) + 10**8, device="cpu", amp="off")
    base = nl.deblur(stack[0], device="cpu", amp="off")
    assert np.abs(out.astype(np.float64) - 1e8 - base).max() < 8.0  # float32 steps are 8 at 1e8
