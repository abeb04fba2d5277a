"""Metrics against values computed by hand on tiny arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_linblur.metrics.defocus import defocus_metrics
from napari_linblur.metrics.focus import (
    brenner,
    focus_measure,
    focus_measure_map,
    normalized_variance,
    tenengrad,
    variance_of_laplacian,
)
from napari_linblur.metrics.image import psnr, psnr_batch, ssim, ssim_batch
from napari_linblur.metrics.latent import apd, lds, linear_traversal

# --------------------------------------------------------------------------------------------- PSNR/SSIM


def test_psnr_by_hand():
    ref = np.array([[0.0, 4.0], [2.0, 2.0]])
    tst = np.array([[1.0, 4.0], [2.0, 1.0]])
    # MSE = (1 + 0 + 0 + 1) / 4 = 0.5 ; max(ref) = 4 -> 20 log10(4 / sqrt(0.5)) = 15.0515 dB
    assert psnr(ref, tst) == pytest.approx(20 * math.log10(4 / math.sqrt(0.5)))
    assert psnr(ref, tst, data_range=255) == pytest.approx(20 * math.log10(255 / math.sqrt(0.5)))
    assert psnr(ref, ref) == math.inf
    # the reference's max, not the test's: swapping arguments changes the peak
    assert psnr(tst, ref) == pytest.approx(20 * math.log10(4 / math.sqrt(0.5)))
    assert psnr(np.array([[1.0, 1.0]]), np.array([[2.0, 2.0]])) == pytest.approx(0.0)


def test_psnr_errors():
    with pytest.raises(ValueError, match="same shape"):
        psnr(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="data_range"):
        psnr(np.zeros((2, 2)), np.ones((2, 2)))  # max(reference) = 0


def test_psnr_batch_is_mean_of_per_image():
    refs = np.array([np.full((2, 2), 10.0), np.full((2, 2), 10.0)])
    tsts = refs - np.array([1.0, 0.01])[:, None, None]
    # image 0: 20 log10(10/1) = 20 ; image 1: 20 log10(10/0.01) = 60 ; mean 40 (not PSNR of pooled MSE)
    mean, per = psnr_batch(refs, tsts, return_all=True)
    assert per == pytest.approx([20.0, 60.0])
    assert mean == pytest.approx(40.0)
    pooled = 20 * math.log10(10 / math.sqrt((1 + 1e-4) / 2))
    assert abs(mean - pooled) > 10


def test_ssim_basic():
    rng = np.random.default_rng(0)
    x = rng.random((32, 32))
    assert ssim(x, x, data_range=1.0) == pytest.approx(1.0)
    noisy = x + 0.3 * rng.standard_normal(x.shape)
    s = ssim(x, noisy, data_range=1.0)
    assert 0 < s < 0.9
    # a larger data range shrinks the effect of noise via the constants
    assert ssim(x, noisy, data_range=100.0) > s
    assert ssim_batch(np.stack([x, x]), np.stack([x, noisy]), data_range=1.0) == pytest.approx((1 + s) / 2)
    assert ssim(np.stack([x, x]), np.stack([x, noisy]), data_range=1.0) == pytest.approx((1 + s) / 2)


# -------------------------------------------------------------------------------------------- LDS / APD


def test_lds_by_hand():
    # collinear, evenly or unevenly spaced, same direction -> every cosine is 1
    assert lds([[0, 0], [1, 0], [3, 0], [4, 0]]) == pytest.approx(1.0)
    # differences: d0 = z0 - z1 = (-1, 0); d1 = z1 - z2 = (0, -1); d2 = z2 - z3 = (1, 0)
    # cos(d0, d1) = 0 ; cos(d1, d2) = 0 -> LDS = 0
    assert lds([[0, 0], [1, 0], [1, 1], [0, 1]]) == pytest.approx(0.0)
    # going back: d0 = (-1, 0), d1 = (1, 0) -> cos = -1 (signed; squared differences would give +1)
    assert lds([[0, 0], [1, 0], [0, 0]]) == pytest.approx(-1.0)
    # 45 degrees: d0 = (-1, 0), d1 = (-1, -1) -> cos = 1 / sqrt(2)
    assert lds([[0, 0], [1, 0], [2, 1]]) == pytest.approx(1 / math.sqrt(2))
    # latents with extra dims are flattened
    z = np.array([[[0.0, 0.0]], [[1.0, 0.0]], [[2.0, 1.0]]])
    assert lds(z) == pytest.approx(1 / math.sqrt(2))
    assert math.isnan(lds([[0, 0], [0, 0], [1, 0]]))
    with pytest.raises(ValueError, match="N >= 3"):
        lds([[0, 0], [1, 1]])


def test_apd_by_hand():
    z = np.array([[0.0, 0.0], [3.0, 0.0], [3.0, 4.0]])
    # default z': uniform traversal from z0 to z2: (0,0), (1.5,2), (3,4); d(z0, z2) = 5
    np.testing.assert_allclose(linear_traversal(z), [[0, 0], [1.5, 2], [3, 4]])
    # d(z0,z1) = 3, d(z1,z2) = 4 ; d' = 2.5, 2.5 -> (0.5 + 1.5) / 2 / 5 = 0.2
    assert apd(z) == pytest.approx(0.2)
    # explicit z' (e.g. from the true alpha of each plane)
    zi = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 5.0]])  # d' = 1, 4 -> (2 + 0) / 2 / 5 = 0.2
    assert apd(z, zi) == pytest.approx(0.2)
    assert apd(z, z) == 0.0
    with pytest.raises(ValueError, match="d\\(z_0"):
        apd([[1.0], [2.0], [1.0]])
    with pytest.raises(ValueError, match="shape"):
        apd(z, zi[:2])


# ------------------------------------------------------------------------------------------ defocus maps


def test_defocus_metrics_by_hand():
    true = np.array([0.0, 1.0, 2.0, 4.0])
    pred = np.array([0.0, 2.0, 2.0, 3.0])
    m = defocus_metrics(pred, true, eps=0.1)
    err = np.array([0.0, 1.0, 0.0, -1.0])
    assert m["mse_norm"] == pytest.approx(np.mean((err / 10) ** 2))  # (0.01 + 0.01) / 4 = 0.005
    assert m["mse_norm"] == pytest.approx(0.005)
    assert m["mae_norm"] == pytest.approx(0.05)  # (0.1 + 0.1) / 4
    assert m["rmse"] == pytest.approx(math.sqrt(0.5))
    # with eps: t' = [0.1, 1.1, 2.1, 4.1], p' = [0.1, 2.1, 2.1, 3.1]
    assert m["abs_rel"] == pytest.approx((0 + 1 / 1.1 + 0 + 1 / 4.1) / 4)
    assert m["sq_rel"] == pytest.approx((0 + 1 / 1.1 + 0 + 1 / 4.1) / 4)
    rl = (math.log(2.1 / 1.1) ** 2 + math.log(3.1 / 4.1) ** 2) / 4
    assert m["rmse_log"] == pytest.approx(math.sqrt(rl))
    # ratios: 1, 1.909, 1, 1.3226 -> <1.25: 2/4 ; <1.5625: 3/4 ; <1.953: 4/4
    assert (m["delta1"], m["delta2"], m["delta3"]) == (0.5, 0.75, 1.0)


def test_defocus_metrics_mask_and_errors():
    true = np.array([[1.0, 5.0]])
    pred = np.array([[1.0, 0.0]])
    m = defocus_metrics(pred, true, mask=np.array([[True, False]]))
    assert m["rmse"] == 0.0 and m["delta1"] == 1.0
    with pytest.raises(ValueError, match="same shape"):
        defocus_metrics(np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="eps"):
        defocus_metrics(np.zeros(2), np.zeros(2), eps=0.0)
    # negative predictions are clipped at 0 for the ratio/log metrics
    m = defocus_metrics(np.array([-1.0]), np.array([0.0]))
    assert m["abs_rel"] == 0.0 and m["rmse"] == 1.0


# ----------------------------------------------------------------------------------------------- focus


IMG4 = np.array(
    [
        [1.0, 2.0, 0.0, 3.0],
        [0.0, 5.0, 1.0, 1.0],
        [2.0, 0.0, 4.0, 0.0],
        [1.0, 1.0, 0.0, 2.0],
    ]
)


def test_variance_of_laplacian_by_hand():
    # interior pixels (1,1), (1,2), (2,1), (2,2):
    # L(1,1) = 2 + 0 + 1 + 0 - 20 = -17 ; L(1,2) = 0 + 5 + 1 + 4 - 4 = 6
    # L(2,1) = 5 + 2 + 4 + 1 - 0 = 12 ;   L(2,2) = 1 + 0 + 0 + 0 - 16 = -15
    vals = np.array([-17.0, 6.0, 12.0, -15.0])
    mean = vals.sum() / 4  # -3.5
    assert variance_of_laplacian(IMG4) == pytest.approx(((vals - mean) ** 2).sum() / 4)
    assert variance_of_laplacian(np.full((5, 5), 7.0)) == 0.0


def test_brenner_by_hand():
    img = np.array([[0.0, 1.0, 3.0], [2.0, 2.0, 2.0], [1.0, 0.0, 0.0]])
    # horizontal pairs (x, x+2): rows -> 3-0, 2-2, 0-1 -> squares 9, 0, 1 -> mean 10/3
    # vertical pairs (y, y+2): cols -> 1-0, 0-1, 0-3 -> squares 1, 1, 9 -> mean 11/3
    assert brenner(img) == pytest.approx(10 / 3 + 11 / 3)


def test_tenengrad_by_hand():
    img = np.array([[0.0, 1.0, 3.0], [2.0, 2.0, 2.0], [1.0, 0.0, 0.0]])
    # Gx at center = (3 - 0) + 2 (2 - 2) + (0 - 1) = 2 ; Gy = (1 - 0) + 2 (0 - 1) + (0 - 3) = -4
    assert tenengrad(img) == pytest.approx(2**2 + 4**2)


def test_normalized_variance_by_hand():
    img = np.array([[1.0, 2.0], [3.0, 6.0]])  # mean 3, var = (4 + 1 + 0 + 9) / 4 = 3.5
    assert normalized_variance(img) == pytest.approx(3.5 / 3)
    with pytest.raises(ValueError, match="mean intensity is 0; normalized variance needs positive"):
        normalized_variance(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="mean intensity is -2"):  # background-subtracted data would rank backwards
        normalized_variance(img - 5.0)
    # zero-mean up to rounding (a mean of 1.9e-15 scored 4e18) and median-subtracted data are refused as well
    centred = np.random.default_rng(0).random((16, 16)) * 100
    centred -= centred.mean()
    for bad in (centred, centred + 1e-12, img - np.median(img)):
        with pytest.raises(ValueError, match="positive intensities"):
            normalized_variance(bad)


def test_focus_measure_map_local():
    # window 1: tenengrad map at an interior pixel equals the squared Sobel response there
    m = focus_measure_map(IMG4, "tenengrad", window=1)
    # pixel (1,1): Gx = (0-1) + 2(1-0) + (4-2) = 3 ; Gy = (2-1) + 2(0-2) + (4-0) = 1
    assert m.shape == IMG4.shape and m.dtype == np.float32
    assert m[1, 1] == pytest.approx(3**2 + 1**2)
    # normvar map with a window over a constant image is 0
    assert np.all(focus_measure_map(np.full((6, 6), 3.0), "normvar", window=3) == 0)
    # local variance of Laplacian: sharp half scores higher than blurred half
    rng = np.random.default_rng(0)
    x = rng.random((32, 64))
    from scipy.ndimage import gaussian_filter

    x[:, 32:] = gaussian_filter(x, 3)[:, 32:]
    lm = focus_measure_map(x, "laplacian", window=7)
    assert lm[:, 4:28].mean() > 10 * lm[:, 36:60].mean()
    for name in ("laplacian", "brenner", "tenengrad", "normvar"):
        assert np.isfinite(focus_measure(x + 1, name))
    with pytest.raises(ValueError, match="choose one of"):
        focus_measure_map(x, "vollath")
    with pytest.raises(ValueError, match="2-D"):
        variance_of_laplacian(np.zeros((2, 4, 4)))


def test_metrics_refuse_nan_and_empty_batches():
    from napari_linblur.metrics.defocus import defocus_metrics
    from napari_linblur.metrics.image import psnr, psnr_batch, ssim, ssim_batch

    a = np.random.default_rng(0).random((16, 16))
    for fn in (psnr, ssim):
        with pytest.raises(ValueError, match="finite"):
            fn(a, a * np.nan, data_range=1.0)
    with pytest.raises(ValueError, match="finite"):
        defocus_metrics(np.array([np.nan, 1.0]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="eps"):
        defocus_metrics(np.array([1.0]), np.array([1.0]), eps=np.nan)
    for fn in (psnr_batch, ssim_batch):
        with pytest.raises(ValueError, match="N >= 1"):
            fn(np.zeros((0, 8, 8)), np.zeros((0, 8, 8)))


def test_vollath_is_positive_on_structure_near_zero_on_noise_and_falls_with_blur():
    """F4 is a difference of autocorrelations: clearly positive on a blurred-but-structured field, exactly 0 on a
    constant one, and on zero-mean noise a value of either sign that is small against structure of the same
    spread (with an offset, the sampling error of its two means grows with the offset)."""
    from scipy.ndimage import gaussian_filter

    from napari_linblur.metrics.focus import vollath

    rng = np.random.default_rng(3)
    noise = rng.normal(0.0, 1.0, (128, 128))
    structure = gaussian_filter(rng.normal(0.0, 1.0, (128, 128)), 2.0)
    structure = structure / structure.std()  # same mean and spread as the noise
    assert vollath(np.full((16, 16), 5.0)) == 0.0
    assert abs(vollath(noise)) < 0.2 * vollath(structure)  # 0.03 vs 0.34 here
    blurred = [vollath(gaussian_filter(structure, s)) for s in (0.5, 2.0, 4.0)]
    assert blurred[0] > blurred[1] > blurred[2] > 0
    with pytest.raises(ValueError, match="at least 3x3"):
        vollath(np.ones((2, 8)))
