"""Optics: PSFs, calibration, exact FFT convolution, spatially varying rendering, maps, shuffle, noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage, signal

from napari_linblur.optics import (
    OpticalSetup,
    born_wolf_psf,
    composite_blur,
    defocus_from_sigma,
    disc_psf,
    equivalent_sigma,
    fft_convolve,
    gaussian_noise,
    gaussian_psf,
    gaussian_random_field_map,
    geometric_sigma,
    gibson_lanni_psf,
    pixel_shuffle,
    poisson_gaussian,
    poisson_noise,
    region_map,
    render_from_defocus,
    render_spatially_varying,
    salt_and_pepper,
    sigma_from_defocus,
)


def lap_var(img):
    return float(ndimage.laplace(np.asarray(img, np.float64)).var())


# ---------------------------------------------------------------- PSFs
@pytest.mark.parametrize(
    "psf",
    [
        gaussian_psf(2.5),
        gaussian_psf(0.0, 5),
        disc_psf(4.2),
        born_wolf_psf(6.0, na=0.45, wavelength_um=0.52, pixel_um=0.65, size=31),
        born_wolf_psf(6.0, na=0.45, wavelength_um=0.52, pixel_um=0.65, size=31, vectorial=False),
        gibson_lanni_psf(
            3.0, na=1.2, wavelength_um=0.52, pixel_um=0.1, ni=1.33, ns=1.38, depth_um=5
        ),
    ],
)
def test_psf_normalized_odd_centred(psf):
    assert psf.ndim == 2 and psf.shape[0] % 2 == 1 and psf.shape[0] == psf.shape[1]
    assert psf.sum() == pytest.approx(1.0, abs=1e-9)
    assert psf.min() >= 0
    c = psf.shape[0] // 2
    yy, xx = np.indices(psf.shape)
    assert (psf * yy).sum() == pytest.approx(c, abs=0.05)
    assert (psf * xx).sum() == pytest.approx(c, abs=0.05)


@pytest.mark.parametrize("s", [1.0, 2.0, 3.5, 7.0])
def test_equivalent_sigma_of_gaussian(s):
    assert equivalent_sigma(gaussian_psf(s)) == pytest.approx(s, rel=0.01)


def test_equivalent_sigma_of_disc_is_half_radius():
    assert equivalent_sigma(disc_psf(8.0)) == pytest.approx(4.0, rel=0.02)


@pytest.mark.parametrize("model", ["gaussian", "disc", "born_wolf", "gibson_lanni"])
def test_setup_psf_widens_with_defocus(model):
    setup = OpticalSetup(na=0.45, wavelength_um=0.52, pixel_um=0.65, model=model, depth_um=2.0)
    sig = [equivalent_sigma(setup.psf(dz)) for dz in (0.0, 4.0, 12.0, 24.0)]
    assert np.all(np.diff(sig) > 0)
    # far from focus every model approaches the geometric blur circle
    assert sig[-1] == pytest.approx(geometric_sigma(24.0, setup), rel=0.1)


def _sharpest_plane(setup, dz):
    """The defocus of the PSF with the highest peak among ``dz``."""
    return float(dz[int(np.argmax([p.max() for p in setup.psf_stack(list(dz), size=15)]))])


@pytest.mark.parametrize(("na", "ni", "ns", "depth"), [(0.75, 1.0, 1.45, 10.0), (1.4, 1.515, 1.33, 10.0)])
def test_gibson_lanni_defocus_zero_is_the_sharpest_plane(na, ni, ns, depth):
    # an index mismatch moves the focus; 0 µm must still be the sharpest plane (psfmodels already focuses at
    # the source depth, so the paraxial shift depth*ni/ns of version 0.1 applied it twice)
    setup = OpticalSetup(na=na, wavelength_um=0.52, pixel_um=0.1, ni=ni, ns=ns, model="gibson_lanni",
                         depth_um=depth)
    dz = np.round(np.arange(-4.0, 4.01, 0.25), 2)
    assert abs(_sharpest_plane(setup, dz)) <= 0.25
    legacy = setup.replace(focus="legacy")
    assert _sharpest_plane(legacy, dz) == pytest.approx(depth * (1 - ni / ns), abs=1.0)
    # the sharpest plane is sharper than the legacy "0 µm" plane, and both signs blur it
    p0, p_old = setup.psf(0.0, size=15).max(), legacy.psf(0.0, size=15).max()
    assert p0 > 1.5 * p_old
    assert setup.psf(2.0, size=15).max() < p0 and setup.psf(-2.0, size=15).max() < p0
    psf = gibson_lanni_psf(0.0, na=na, wavelength_um=0.52, pixel_um=0.1, ni=ni, ns=ns, depth_um=depth, size=15)
    assert np.allclose(psf, setup.psf(0.0, size=15))


def test_gibson_lanni_without_mismatch_is_born_wolf_and_focus_round_trips():
    kw = dict(na=0.45, wavelength_um=0.52, pixel_um=0.65)
    bw = born_wolf_psf(6.0, size=21, **kw)
    for focus in ("sharpest", "legacy"):
        assert np.allclose(gibson_lanni_psf(6.0, ns=1.0, depth_um=3.0, size=21, focus=focus, **kw), bw,
                           rtol=1e-6, atol=1e-12)
        # a source at the coverslip: both conventions put 0 µm at the same (sharpest) plane
        at0 = [gibson_lanni_psf(dz, ns=1.33, depth_um=0.0, size=21, focus=focus, **kw) for dz in (-1, 0, 1)]
        assert at0[1].max() > max(at0[0].max(), at0[2].max())
    s = OpticalSetup(model="gibson_lanni", depth_um=2.0)
    assert s.focus == "sharpest" and OpticalSetup.from_dict(s.to_dict()) == s
    # a setup recorded before the field existed renders as it did then
    old = {k: v for k, v in s.to_dict().items() if k != "focus"}
    assert OpticalSetup.from_dict(old).focus == "legacy"
    g = OpticalSetup(model="gaussian")  # models that ignore focus read an old dict as the same setup
    assert OpticalSetup.from_dict({k: v for k, v in g.to_dict().items() if k != "focus"}) == g
    with pytest.raises(ValueError, match="focus must be one of"):
        OpticalSetup(focus="paraxial")
    with pytest.raises(ValueError, match="focus must be one of"):
        gibson_lanni_psf(1.0, focus=None, **kw)


def test_calibration_monotone_and_invertible():
    setup = OpticalSetup(na=0.45, wavelength_um=0.46, pixel_um=0.65, model="born_wolf")
    dz = np.linspace(0, 60, 61)
    sig = sigma_from_defocus(dz, setup)
    assert np.all(np.diff(sig) > 0)
    assert np.allclose(sigma_from_defocus(-dz, setup), sig)
    back = defocus_from_sigma(sig, setup)
    assert np.allclose(back, dz, atol=1e-6)
    # geometric closed form agrees away from focus
    assert sig[40] == pytest.approx(geometric_sigma(40.0, setup), rel=0.05)
    assert isinstance(sigma_from_defocus(3.0, setup), float)


def test_gaussian_model_psf_is_the_whole_gaussian_of_its_sigma():
    """The gaussian model's PSF spans ±4σ (not the blur-circle window, ±2.5σ of it): its equivalent σ is the
    geometric σ it is defined by (beyond the sub-pixel σ near focus, where a point-sampled Gaussian has less)."""
    setup = OpticalSetup(na=0.45, wavelength_um=0.5, pixel_um=0.65, model="gaussian")
    for dz in (5.0, 10.0, 30.0):
        psf = setup.psf(dz)
        assert psf.shape[0] == 2 * math.ceil(4 * geometric_sigma(dz, setup)) + 1
        assert equivalent_sigma(psf) == pytest.approx(geometric_sigma(dz, setup), rel=2e-3)
        assert sigma_from_defocus(dz, setup) == pytest.approx(geometric_sigma(dz, setup), rel=2e-3)


@pytest.mark.parametrize(("optics", "dz"), [
    ({"na": 0.45, "pixel_um": 0.65}, (0.25, 1.5, 70.0)),  # near focus (the table was coarse there) and beyond it
    ({"na": 0.8, "pixel_um": 0.3}, (0.25, 13.5)),
    ({"na": 1.4, "pixel_um": 0.1, "ni": 1.515}, (0.5, 2.5, 3.0)),  # beyond the table: the ray cone, not R / 2
])
def test_calibration_follows_the_wave_psf_near_focus_and_beyond_its_table(optics, dz):
    """The table against the equivalent σ of the PSF itself. It was 4-7 % high near focus at NA 0.45 (points 1 µm
    apart where σ curves), and 12-16 % high past the table at NA 1.4, extrapolated with the paraxial R / 2."""
    setup = OpticalSetup(wavelength_um=0.52, model="born_wolf", **optics)
    direct = np.array([equivalent_sigma(setup.psf(d)) for d in dz])
    np.testing.assert_allclose(sigma_from_defocus(np.array(dz), setup), direct, rtol=0.02)


def test_calibration_high_na_gaussian_model():
    setup = OpticalSetup(
        na=1.4, wavelength_um=0.6, pixel_um=0.1, ni=1.515, ns=1.515, model="gaussian"
    )
    assert sigma_from_defocus(0.0, setup) == pytest.approx(0.21 * 0.6 / 1.4 / 0.1, rel=0.02)
    assert defocus_from_sigma(sigma_from_defocus(2.0, setup), setup) == pytest.approx(2.0, rel=1e-6)


@pytest.mark.parametrize(
    ("call", "arg"),
    [
        (lambda: gaussian_psf(-1.0), "sigma"),
        (lambda: gaussian_psf(float("nan")), "sigma"),
        (lambda: gaussian_psf(1.0, 4), "size"),
        (lambda: disc_psf(-2.0), "radius"),
        (lambda: born_wolf_psf(1.0, na=1.2, wavelength_um=0.5, pixel_um=0.1, ni=1.0), "na"),
        (lambda: OpticalSetup(model="airy"), "model"),
        (lambda: OpticalSetup(model="gibson_lanni", focus="best"), "focus"),
        (lambda: equivalent_sigma(np.ones(5)), "psf"),
        (lambda: sigma_from_defocus(np.nan, OpticalSetup(model="gaussian")), "defocus_um"),
        (lambda: defocus_from_sigma(-1.0, OpticalSetup(model="gaussian")), "sigma_px"),
        # a blur in the wrong units: a clear error naming it, not a MemoryError for a 466 TB kernel
        (lambda: gaussian_psf(1e6), r"sigma=1e\+06 px.*at most 4097 px"),
        (lambda: disc_psf(3000.0), r"radius=3000 px.*at most 4097"),
        (lambda: gaussian_psf(1.0, 5001), r"size is 5001 px.*at most 4097"),
        (lambda: OpticalSetup(model="disc").psf(1e5), r"defocus 100000 µm.*at most 4097"),
    ],
)
def test_psf_bad_inputs(call, arg):
    with pytest.raises(ValueError, match=arg):
        call()


# ---------------------------------------------------------------- convolution
@pytest.mark.parametrize("mode", ["reflect", "mirror", "nearest", "constant", "wrap"])
def test_fft_convolve_matches_ndimage(mode):
    rng = np.random.default_rng(1)
    img, k = rng.random((37, 50)), rng.random((9, 13))
    assert np.allclose(
        fft_convolve(img, k, mode=mode), ndimage.convolve(img, k, mode=mode), atol=1e-10
    )


def test_fft_convolve_constant_matches_scipy_signal_and_batches():
    rng = np.random.default_rng(2)
    img, k = rng.random((3, 30, 41)), gaussian_psf(3.0)
    out = fft_convolve(img, k, mode="constant")
    for c in range(3):
        assert np.allclose(out[c], signal.convolve(img[c], k, mode="same"), atol=1e-10)


def test_fft_convolve_no_wraparound():
    img = np.zeros((40, 40))
    img[0, 0] = 1.0  # a point at the corner must not leak to the opposite corner
    out = fft_convolve(img, gaussian_psf(3.0), mode="constant")
    assert out[-1, -1] == pytest.approx(0.0, abs=1e-12)
    assert out[-8:, :].max() < 1e-12


def test_fft_convolve_bad_inputs():
    with pytest.raises(ValueError, match="image"):
        fft_convolve(np.ones(5), gaussian_psf(1.0))
    with pytest.raises(ValueError, match="image"):
        fft_convolve(np.full((5, 5), np.nan), gaussian_psf(1.0))
    with pytest.raises(ValueError, match="psf"):
        fft_convolve(np.ones((5, 5)), np.ones((4, 4)))
    with pytest.raises(ValueError, match="mode"):
        fft_convolve(np.ones((5, 5)), np.ones((3, 3)), mode="bogus")


# ---------------------------------------------------------------- spatially varying rendering
def test_varying_constant_map_equals_plain_convolution():
    rng = np.random.default_rng(3)
    img = rng.random((48, 64))
    for s in (0.0, 2.5):
        out = render_spatially_varying(img, np.full(img.shape, s))
        assert np.allclose(out, fft_convolve(img, gaussian_psf(s)), atol=1e-5)
    assert np.allclose(render_spatially_varying(img, np.zeros(img.shape)), img, atol=1e-6)


def test_varying_scatter_differs_from_composite_at_region_edges():
    rng = np.random.default_rng(4)
    img = rng.random((64, 64)) * 0.1
    img[20:44, 36:44] += 5.0  # bright object in the blurry half, next to the edge
    sig = np.zeros((64, 64))
    sig[:, 32:] = 6.0
    scatter = render_spatially_varying(img, sig)
    comp = composite_blur(img, sig)
    # away from the edge both agree: the sharp half far left, the blurry half far right
    assert np.allclose(scatter[:, :8], comp[:, :8], atol=1e-3)
    # at the edge light from the blurry bright object spills over the sharp side in the scatter model only
    edge = np.abs(scatter[:, 24:32] - comp[:, 24:32])
    assert edge.max() > 0.1
    assert scatter[:, 24:32].sum() > comp[:, 24:32].sum() + 1.0
    # scatter conserves flux (zero margins and mode='constant': nothing leaves the frame)
    inner = np.zeros_like(img)
    inner[24:40, 16:48] = img[24:40, 16:48]
    out = render_spatially_varying(inner, sig, mode="constant")
    assert out.sum() == pytest.approx(inner.sum(), rel=1e-4)
    assert composite_blur(inner, sig, mode="constant").sum() != pytest.approx(inner.sum(), rel=1e-2)


def test_varying_point_sources_keep_their_own_sigma():
    img = np.zeros((64, 64))
    img[32, 16] = img[32, 48] = 1.0
    sig = np.zeros((64, 64))
    sig[:, 32:] = 3.0
    out = render_spatially_varying(img, sig)
    assert out[32, 16] == pytest.approx(1.0, abs=1e-4)
    right = out[:, 32:]
    assert equivalent_sigma(right / right.sum()) == pytest.approx(3.0, rel=0.02)


def test_varying_linear_between_levels_and_gather_runs():
    rng = np.random.default_rng(5)
    img = rng.random((32, 32))
    sig = np.linspace(0, 4, 32)[None, :].repeat(32, 0)
    a = render_spatially_varying(img, sig)
    b = render_spatially_varying(img, sig, n_levels=33)
    assert np.abs(a - b).max() < 0.1 and np.abs(a - b).mean() < 0.01
    g = render_spatially_varying(img, sig, method="gather")
    assert g.shape == img.shape and g.dtype == np.float32


def test_render_from_defocus_uses_calibration():
    setup = OpticalSetup(na=0.45, wavelength_um=0.52, pixel_um=0.65, model="gaussian")
    img = np.random.default_rng(6).random((32, 32))
    d = np.full((32, 32), 10.0)
    expected = render_spatially_varying(img, np.full((32, 32), sigma_from_defocus(10.0, setup)))
    assert np.allclose(render_from_defocus(img, d, setup), expected)


def test_varying_bad_inputs():
    img = np.ones((16, 16))
    with pytest.raises(ValueError, match="sigma_map"):
        render_spatially_varying(img, -np.ones((16, 16)))
    with pytest.raises(ValueError, match="sigma_map"):
        render_spatially_varying(img, np.ones((8, 16)))
    with pytest.raises(ValueError, match="sigma_map"):
        render_spatially_varying(img, np.full((16, 16), np.nan))
    with pytest.raises(ValueError, match="method"):
        render_spatially_varying(img, np.ones((16, 16)), method="x")


# ---------------------------------------------------------------- defocus maps
def test_gaussian_random_field_map_range_smooth_seeded():
    m = gaussian_random_field_map((96, 128), sigma_range=(0, 10), correlation_px=16, rng=0)
    assert m.dtype == np.float32 and m.shape == (96, 128)
    assert m.min() == pytest.approx(0.0, abs=1e-5) and m.max() == pytest.approx(10.0, abs=1e-4)
    assert np.abs(np.diff(m, axis=1)).max() < 1.0  # smooth
    assert np.array_equal(m, gaussian_random_field_map((96, 128), correlation_px=16, rng=0))


def test_region_map_paper_split():
    m = region_map((300, 400), rng=1)
    vals = np.unique(m)
    assert len(vals) == 16 and vals.min() >= 0 and vals.max() <= 10
    # first split point lies more than 50 px from the border: row/col 50 and the last 50 are one region each
    assert len(np.unique(m[:50, :50])) == 1 and len(np.unique(m[-50:, -50:])) == 1


def test_region_map_from_labels_and_errors():
    lab = np.zeros((20, 20), int)
    lab[5:10, 5:10] = 1
    lab[12:, 12:] = 7
    m = region_map(labels=lab, sigma_range=(2, 3), rng=0)
    assert len(np.unique(m)) == 3 and m.min() >= 2 and m.max() <= 3
    with pytest.raises(ValueError, match="shape"):
        region_map()
    with pytest.raises(ValueError, match="sigma_range"):
        region_map((10, 10), sigma_range=(-1, 3))
    with pytest.raises(ValueError, match="labels"):
        region_map(labels=np.zeros(5, int))


# ---------------------------------------------------------------- pixel shuffle
def test_pixel_shuffle_histogram_exact_and_sharper():
    rng = np.random.default_rng(7)
    img = ndimage.gaussian_filter(rng.random((64, 80)), 3)  # a blurry image
    out = pixel_shuffle(img, rng=0)
    assert out.shape == img.shape and out.dtype == img.dtype
    assert np.array_equal(np.sort(out, axis=None), np.sort(img, axis=None))
    assert lap_var(out) > 50 * lap_var(img)
    assert np.array_equal(out, pixel_shuffle(img, rng=0))


def test_pixel_shuffle_keeps_channels_together():
    rng = np.random.default_rng(8)
    rgb = rng.integers(0, 255, (16, 20, 3), dtype=np.uint8)
    out = pixel_shuffle(rgb, 0, channel_axis=-1)
    before = {tuple(v) for v in rgb.reshape(-1, 3)}
    after = {tuple(v) for v in out.reshape(-1, 3)}
    assert before == after
    with pytest.raises(ValueError, match="image"):
        pixel_shuffle(np.ones(4))


# ---------------------------------------------------------------- noise
def test_poisson_gaussian_statistics_and_seed():
    lam = np.full((200, 200), 50.0)
    out = poisson_gaussian(lam, gain=2.0, read_noise=3.0, offset=100.0, rng=0)
    assert out.mean() == pytest.approx(200.0, rel=0.01)
    assert out.var() == pytest.approx(4 * (50 + 9), rel=0.05)
    assert np.array_equal(out, poisson_gaussian(lam, gain=2.0, read_noise=3.0, offset=100.0, rng=0))
    with pytest.raises(ValueError, match="image_photons"):
        poisson_gaussian(-lam)
    with pytest.raises(ValueError, match="read_noise"):
        poisson_gaussian(lam, read_noise=-1)


def test_other_noises():
    img = np.full((100, 100), 0.5)
    sp = salt_and_pepper(img, 0.2, low=0.0, high=1.0, rng=0)
    assert set(np.unique(sp)) == {0.0, 0.5, 1.0}
    assert 0.17 < np.mean(sp != 0.5) < 0.23
    assert gaussian_noise(img, 0.1, rng=0).std() == pytest.approx(0.1, rel=0.05)
    assert poisson_noise(img, scale=100, rng=0).mean() == pytest.approx(0.5, rel=0.02)
    with pytest.raises(ValueError, match="amount"):
        salt_and_pepper(img, 2.0)
    with pytest.raises(ValueError, match="low and high must be finite"):
        salt_and_pepper(img, 0.2, low=float("nan"))


def test_tiny_and_empty_images_never_hang():
    """A one-pixel-high image in 'mirror'/'reflect' mode used to loop for ever; an empty one too."""
    from scipy import ndimage as ndi

    from napari_linblur.optics.convolve import fft_convolve
    from napari_linblur.optics.psf import gaussian_psf

    k = gaussian_psf(1.0)
    for shape in ((1, 5), (5, 1), (1, 1)):
        a = np.random.default_rng(0).random(shape)
        for mode in ("mirror", "reflect", "nearest", "wrap", "constant"):
            np.testing.assert_allclose(fft_convolve(a, k, mode=mode), ndi.convolve(a, k, mode=mode), atol=1e-9)
    with pytest.raises(ValueError, match="empty"):
        fft_convolve(np.zeros((0, 5)), k)


@pytest.mark.parametrize("kw, says", [
    ({"wavelength_um": 520}, "a wavelength in nm? 520 nm is wavelength_um=0.52"),
    ({"wavelength_um": 0.05}, "wavelength_um must be the emission wavelength in µm (0.1 to 3), got 0.05"),
    ({"pixel_um": 650}, "a size in nm? 650 nm is pixel_um=0.65"),
])
def test_optical_setup_refuses_lengths_in_nm(kw, says):
    """A wavelength or pixel size in nm used to convert silently (every sigma below the in-focus one -> 0 µm)."""
    from napari_linblur.inference.defocus_ops import sigma_to_defocus_um

    with pytest.raises(ValueError) as err:
        OpticalSetup(**kw)
    assert says in str(err.value)
    full = {"na": 0.45, "wavelength_um": 0.52, "pixel_um": 0.65, **kw}
    with pytest.raises(ValueError, match="in nm|in µm"):
        sigma_to_defocus_um(np.array([1.0, 3.0]), **full)
