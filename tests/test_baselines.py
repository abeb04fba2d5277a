"""Classical baselines: Wiener / Richardson-Lucy with the true PSF, focus-measure and Zhuo-Sim defocus maps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.signal import fftconvolve

from napari_linblur.baselines.defocus_classical import (
    calibrate_focus_measure,
    focus_measure_sigma_map,
    zhuo_sim_defocus_map,
)
from napari_linblur.baselines.richardson_lucy import best_richardson_lucy, richardson_lucy
from napari_linblur.baselines.wiener import best_wiener, wiener_deconvolve
from napari_linblur.metrics.image import psnr


def _gauss_psf(sigma: float, r: int = 7) -> np.ndarray:
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    k = np.exp(-(x**2 + y**2) / (2 * sigma**2))
    return k / k.sum()


def _blur(img: np.ndarray, psf: np.ndarray) -> np.ndarray:
    r = psf.shape[0] // 2
    return fftconvolve(np.pad(img, r, mode="reflect"), psf, mode="valid")


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(0)
    sharp = np.zeros((64, 64))
    pts = rng.integers(4, 60, (25, 2))
    sharp[pts[:, 0], pts[:, 1]] = 1.0
    sharp = gaussian_filter(sharp, 1.0) * 100 + 10
    psf = _gauss_psf(2.0)
    blurred = _blur(sharp, psf) + rng.normal(0, 0.05, sharp.shape)
    return sharp, psf, blurred


def test_wiener_identity_and_shape():
    img = np.random.default_rng(1).random((2, 20, 24)).astype(np.float32)
    delta = np.zeros((5, 5))
    delta[2, 2] = 1
    out = wiener_deconvolve(img, delta, 1e-8)
    assert out.shape == img.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, img, atol=1e-4)
    with pytest.raises(ValueError, match="balance"):
        wiener_deconvolve(img, delta, 0)
    with pytest.raises(ValueError, match="psf"):
        wiener_deconvolve(img, -delta, 0.1)


def test_wiener_no_wraparound():
    # bright left edge, dark right edge: a circular deconvolution would leak the left edge into the right
    img = np.zeros((32, 32))
    img[:, :3] = 100.0
    psf = _gauss_psf(1.5, r=5)
    out = wiener_deconvolve(_blur(img, psf), psf, 1e-3)
    assert np.abs(out[:, -6:]).max() < 1.0


def test_best_wiener_picks_best_balance(scene):
    sharp, psf, blurred = scene
    balances = np.logspace(-4, 0, 5)
    restored, bal, score = best_wiener(blurred, psf, sharp, balances, regs="laplacian")
    manual = [psnr(sharp, wiener_deconvolve(blurred, psf, b)) for b in balances]
    assert bal == pytest.approx(balances[int(np.argmax(manual))])
    assert score == pytest.approx(max(manual))
    assert score > psnr(sharp, blurred) + 1.0
    np.testing.assert_allclose(restored, wiener_deconvolve(blurred, psf, bal))


@pytest.mark.parametrize("reg", ["laplacian", "identity"])
def test_wiener_keeps_the_mean_at_any_balance(scene, reg):
    """A PSF sums to 1: deblurring must not darken. The constant-NSR filter conj(H)/(|H|^2 + b) scaled the mean by
    1/(1 + b), which made the oracle baseline lose to the blurry input at small defocus."""
    _, psf, blurred = scene
    for b in (1e-3, 0.05, 1.0):
        out = wiener_deconvolve(blurred, psf, b, reg=reg)
        assert out.mean() == pytest.approx(blurred.mean(), rel=2e-3)
    with pytest.raises(ValueError, match="reg"):
        wiener_deconvolve(blurred, psf, 0.1, reg="tikhonov")


def test_best_wiener_searches_both_regularizers(scene):
    from napari_linblur.baselines.wiener import REGULARIZERS

    sharp, psf, blurred = scene
    both = best_wiener(blurred, psf, sharp)[2]
    each = {r: max(psnr(sharp, wiener_deconvolve(blurred, psf, b, reg=r)) for b in REGULARIZERS[r])
            for r in REGULARIZERS}
    assert both == pytest.approx(max(each.values()))
    assert best_wiener(blurred, psf, sharp, regs="identity")[2] == pytest.approx(each["identity"])


def test_best_wiener_estimates_a_reference_that_carries_its_own_blur(scene):
    """A captured in-focus plane still has its in-focus PSF: the oracle re-blurred by it (reference_psf) is the
    Wiener estimate of that plane and scores higher against it than the deconvolution to the object does."""
    sharp, psf, blurred = scene
    psf0 = _gauss_psf(1.0)
    reference = _blur(sharp, psf0)
    plain = best_wiener(blurred, psf, reference)[2]
    restored, bal, matched = best_wiener(blurred, psf, reference, reference_psf=psf0)
    assert matched > plain + 0.5, (matched, plain)
    assert matched == pytest.approx(psnr(reference, restored))
    from napari_linblur.optics.convolve import fft_convolve

    np.testing.assert_allclose(restored, fft_convolve(wiener_deconvolve(blurred, psf, bal), psf0), rtol=1e-6,
                               atol=1e-6)


def test_best_richardson_lucy_estimates_a_reference_that_carries_its_own_blur(scene):
    """The same oracle for RL: each iterate is also scored re-blurred by ``reference_psf``, the better version counts
    (so it is never worse than the plain oracle), and with enough iterations the re-blurred one wins."""
    from napari_linblur.optics.convolve import fft_convolve

    sharp, psf, blurred = scene
    psf0 = _gauss_psf(1.0)
    reference = _blur(sharp, psf0)
    few = best_richardson_lucy(blurred, psf, reference, max_iter=40)
    assert best_richardson_lucy(blurred, psf, reference, max_iter=40, reference_psf=psf0)[2] >= few[2]
    plain = best_richardson_lucy(blurred, psf, reference, max_iter=200)[2]
    restored, k, matched, curve = best_richardson_lucy(blurred, psf, reference, max_iter=200, reference_psf=psf0)
    assert matched > plain + 0.5, (matched, plain)
    assert matched == pytest.approx(psnr(reference, restored)) == pytest.approx(curve.max())
    np.testing.assert_allclose(restored, fft_convolve(richardson_lucy(blurred, psf, k), psf0), rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="psf: need finite non-negative"):
        best_richardson_lucy(blurred, psf, reference, reference_psf=-psf0)


def test_richardson_lucy_identity_and_improves(scene):
    sharp, psf, blurred = scene
    delta = np.zeros((3, 3))
    delta[1, 1] = 1
    np.testing.assert_allclose(richardson_lucy(sharp, delta, 3), sharp, rtol=1e-4)
    out = richardson_lucy(blurred, psf, 20)
    assert out.dtype == np.float32 and out.shape == blurred.shape
    assert psnr(sharp, out) > psnr(sharp, blurred) + 1.0
    # flux is (approximately) preserved
    assert out.sum() == pytest.approx(blurred.sum(), rel=0.02)


def test_best_richardson_lucy_tracks_psnr(scene):
    sharp, psf, blurred = scene
    restored, k, score, curve = best_richardson_lucy(blurred, psf, sharp, max_iter=15)
    assert curve.shape == (15,)
    assert k == int(np.argmax(curve)) + 1 and score == pytest.approx(curve.max())
    np.testing.assert_allclose(restored, richardson_lucy(blurred, psf, k), rtol=1e-5, atol=1e-4)


def test_focus_measure_sigma_map_recovers_sigma():
    cal = calibrate_focus_measure(window=11, sigmas=np.linspace(0, 10, 21), seed=3)
    assert np.all(np.diff(cal.responses) < 0)
    rng = np.random.default_rng(4)
    for s in (1.5, 4.0):
        img = gaussian_filter(rng.random((96, 96)), s) * 1000 + 50  # contrast and offset do not matter
        est = focus_measure_sigma_map(img, calibration=cal)
        assert est.shape == img.shape and est.dtype == np.float32
        assert np.median(est[16:-16, 16:-16]) == pytest.approx(s, rel=0.2)
    # spatially varying: left sharp, right blurred
    x = rng.random((64, 128))
    x[:, 64:] = gaussian_filter(x, 5.0)[:, 64:]
    est = focus_measure_sigma_map(x, calibration=cal)
    assert np.median(est[:, 8:52]) < 1.0 < 3.5 < np.median(est[:, 76:120])


def test_zhuo_sim_step_edge():
    step = np.zeros((64, 96))
    step[:, 48:] = 1.0
    for s in (1.0, 2.0, 3.0):
        est = zhuo_sim_defocus_map(gaussian_filter(step, s) * 500)
        assert est.shape == step.shape and est.dtype == np.float32
        assert np.median(est[8:-8, 40:56]) == pytest.approx(s, rel=0.25)
    flat = zhuo_sim_defocus_map(np.ones((16, 16)))
    assert np.all(flat == 10.0)


def test_zhuo_sim_spatially_varying():
    rng = np.random.default_rng(5)
    base = (gaussian_filter(rng.random((96, 128)), 2.0) > 0.5).astype(float)
    img = base.copy()
    img[:, 64:] = gaussian_filter(base, 4.0)[:, 64:]
    img[:, :64] = gaussian_filter(base, 0.8)[:, :64]
    est = zhuo_sim_defocus_map(img)
    assert np.median(est[:, 8:56]) < np.median(est[:, 72:120])
    assert np.all(np.isfinite(est)) and est.min() >= 0 and est.max() <= 10
