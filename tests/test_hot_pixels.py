"""A camera's hot pixel (one pixel far brighter than its neighbours, which no optical image has) is suppressed before
every network sees it, so it stays a local artifact instead of disturbing σ maps and restorations far away; genuine
point sources are left alone; and wide inputs keep a small contrast on a large offset."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

import napari_linblur as nl
from napari_linblur.inference.normalize import (
    HOT_PIXEL_RATIO,
    fit_normalization,
    suppress_hot_pixels,
)

HOT = [(20, 30), (64, 64), (100, 15), (0, 77), (127, 127)]  # two on the border


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _scene(blur: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sharp = np.zeros((128, 128))
    sharp[rng.integers(0, 128, 150), rng.integers(0, 128, 150)] = 1
    return rng.poisson(gaussian_filter(sharp, blur) * 20000 + 100).clip(0, 65535).astype(np.uint16)


def _far(mask_px: float = 8.0) -> np.ndarray:
    yy, xx = np.mgrid[:128, :128]
    dist = np.min([np.hypot(yy - y, xx - x) for y, x in HOT], axis=0)
    return dist > mask_px


def _with_hot(plane: np.ndarray) -> np.ndarray:
    out = plane.copy()
    for y, x in HOT:
        out[y, x] = 65535
    return out


def test_isolated_hot_pixels_are_replaced_by_the_median_of_their_neighbours():
    """Also on the border, beside a bright structure, and two side by side."""
    x = np.full((8, 8), 0.2, np.float32)
    x[0, 0], x[3, 3], x[3, 4] = 80.0, 60.0, 1.5  # a hot pixel beside a bright pixel
    x[6, 5] = x[6, 6] = 70.0
    out = suppress_hot_pixels(x)
    assert out[0, 0] == out[3, 3] == out[6, 5] == out[6, 6] == pytest.approx(0.2)
    assert x[0, 0] == 80.0, "the input is never changed"
    changed = [0, 27, 53, 54]
    assert np.array_equal(np.delete(out.ravel(), changed), np.delete(x.ravel(), changed))


def test_clean_planes_and_point_sources_are_left_alone():
    """A bright point source centred on a pixel and blurred by a Gaussian of σ = 0.3 px (less than pixel integration
    alone gives) is not a hot pixel, nor is a bright blob: the plane comes back as the same object."""
    yy, xx = np.mgrid[-4:5, -4:5]
    from scipy.special import erf

    def cell(d):  # a pixel-integrated Gaussian, σ = 0.3 px
        return 0.5 * (erf((d + 0.5) / (0.3 * np.sqrt(2))) - erf((d - 0.5) / (0.3 * np.sqrt(2))))

    x = np.zeros((32, 32), np.float32)
    x[10:19, 10:19] = 400 * cell(yy) * cell(xx)
    assert x.max() > 300 and x[14, 14] / np.sort(np.delete(x[13:16, 13:16].ravel(), 4))[-2] < HOT_PIXEL_RATIO
    assert suppress_hot_pixels(x) is x
    x[24:27, 24:27] = 50.0  # a sharp-edged blob, corners included
    x[28, 28:30] = 50.0
    x[29, 28] = 50.0  # three pixels in an L
    assert suppress_hot_pixels(x) is x
    norm = fit_normalization(_scene(0.7))
    clean = norm.apply(_scene(0.7))
    assert suppress_hot_pixels(clean) is clean


@pytest.mark.parametrize("blur", [0.7, 3.0])
def test_hot_pixels_do_not_disturb_the_defocus_map_away_from_them(blur):
    plane = _scene(blur)
    ref = nl.estimate_defocus(plane, device="cpu", amp="off")
    got = nl.estimate_defocus(_with_hot(plane), device="cpu", amp="off")
    far = _far()
    assert np.abs(got - ref)[far].max() < 0.1, np.abs(got - ref)[far].max()  # before: up to 2.2 px, 20-47 % of pixels
    assert abs(float(np.median(got)) - float(np.median(ref))) < 0.02


def test_hot_pixels_do_not_disturb_the_restorations_away_from_them():
    plane = _scene(2.0)
    rng = 0.005 * float(plane.max() - plane.min())  # 0.5 % of the range (before: deblur changed by more than it)
    blurrier = gaussian_filter(plane.astype(np.float32), 2.0).astype(np.uint16)  # the same sensor: the same hot pixels
    for op in (lambda b, c: nl.deblur(b, method="network", device="cpu", amp="off"),
               lambda b, c: nl.deblur_pair(b, c, 0.5, device="cpu"),
               lambda b, c: nl.synthesize_blur(b, c, 0.5, device="cpu")):
        ref, got = op(plane, blurrier), op(_with_hot(plane), _with_hot(blurrier))
        assert np.abs(got - ref)[_far()].max() < rng, np.abs(got - ref)[_far()].max()


def test_a_small_contrast_on_a_large_offset_survives_normalization():
    """float64 (and 32/64-bit integer) inputs are normalized in float64: float32 would round 2**24 + x to even x."""
    base = np.random.default_rng(1).integers(0, 41, (64, 64)).astype(np.float64)
    for offset in (0.0, 2.0**24, 1e8):
        img = base + offset
        x = fit_normalization(img).apply(img)
        assert len(np.unique(x)) == len(np.unique(base)), offset
        np.testing.assert_allclose(x, fit_normalization(base).apply(base), atol=1e-6)
    big = (base.astype(np.uint32) + 2**26)
    assert len(np.unique(fit_normalization(big).apply(big))) == len(np.unique(base))
