"""Patch mode of the defocus map averages the plane's signal pixels (NaN where a tile has none), with the SHIPPED
``defocus-default`` model on a synthetic in-focus fluorescence field; per-plane focus errors name the plane."""

import dask.array as da
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from napari_linblur.inference import defocus_ops as D
from napari_linblur.models.registry import list_models
from napari_linblur.synth import cell_phantom, get_recipe, through_focus_stack

P = 32  # patch side
KW = {"device": "cpu", "amp": "off"}  # the same float32 numbers on any CPU
CLOSE = {"rtol": 1e-5, "atol": 1e-5}  # torch in dask threads may differ in the last bits
shipped = pytest.mark.skipif("defocus-default" not in list_models(), reason="defocus-default not shipped")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cells():
    """An in-focus BBBC006-like nuclei plane (0 µm, 128 x 192 px): four nuclei on empty background."""
    shape = (128, 192)
    content = cell_phantom(shape, n_cells=4, rng=1)
    return through_focus_stack(content, get_recipe("bbbc006-like", shape=shape), [0.0], rng=0)[0, 0]


@pytest.fixture(scope="module")
def texture():
    """Smooth random texture everywhere with Poisson noise: no pixel stands out (an empty signal mask)."""
    rng = np.random.default_rng(0)
    return rng.poisson(gaussian_filter(rng.random((128, 192)), 2) * 2000 + 100).astype(np.uint16)


@pytest.fixture(scope="module")
def sigma(cells):
    return D.estimate_defocus(cells, **KW)


def _tiles(shape):
    for y in range(0, shape[0], P):
        for x in range(0, shape[1], P):
            yield y // P, x // P, np.s_[y: y + P, x: x + P]


@shipped
def test_background_tiles_are_nan_and_signal_tiles_read_the_structure(cells, sigma):
    mask = D.signal_mask(cells)
    assert 0.02 < mask.mean() < 0.5  # nuclei on empty background
    grid = D.defocus_patches(cells, patch_size=P, **KW)
    assert grid.shape == (4, 6) and grid.dtype == np.float32
    expect = np.full(grid.shape, np.nan)
    for i, j, t in _tiles(cells.shape):
        if mask[t].any():
            expect[i, j] = sigma[t][mask[t]].mean()
    np.testing.assert_allclose(grid, expect, **CLOSE)  # NaN exactly where a tile has no signal
    empty = np.isnan(grid)
    assert empty.sum() >= 6 and (~empty).sum() >= 4
    # in focus: every tile with signal reads about the per-pixel σ of the signal, none reads "defocused"
    on_signal = float(np.median(sigma[mask]))
    assert on_signal < 1.2
    assert np.nanmax(grid) < 1.6 and np.all(np.abs(grid[~empty] - on_signal) < 1.0)
    # ...while averaging every pixel (the old default) reads the background's guess as several px of blur
    old = D.defocus_patches(cells, patch_size=P, patch_pixels="all", **KW)
    assert old.max() > 2.0 and np.isfinite(old).all()
    # the broadcast map of estimate_defocus(mode="patch") holds the same values, NaN tiles included
    full = D.estimate_defocus(cells, mode="patch", patch_size=P, **KW)
    assert full.shape == cells.shape and full.dtype == np.float32
    tiles = np.repeat(np.repeat(grid, P, 0), P, 1)[: cells.shape[0], : cells.shape[1]]
    np.testing.assert_allclose(full, tiles, **CLOSE)


@shipped
def test_all_pixels_option_is_the_old_average(cells, sigma):
    grid = D.defocus_patches(cells, patch_size=P, patch_pixels="all", **KW)
    np.testing.assert_allclose(grid, D.patch_means(sigma, P), **CLOSE)
    np.testing.assert_allclose(grid[0, 0], sigma[:P, :P].mean(), rtol=1e-5)
    full = D.estimate_defocus(cells, mode="patch", patch_size=P, patch_pixels="all", **KW)
    np.testing.assert_allclose(full[::P, ::P], grid, **CLOSE)
    # the pixel map does not depend on the option
    np.testing.assert_allclose(D.estimate_defocus(cells, patch_pixels="all", **KW), sigma, **CLOSE)
    # a patch larger than the plane is one tile, the plane's mean (it used to allocate patch_size² pixels: a
    # patch_size of 10**6 asked numpy for 3.6 TiB)
    whole = D.estimate_defocus(cells, mode="patch", patch_size=10**6, patch_pixels="all", **KW)
    assert whole.shape == cells.shape and np.unique(whole).size == 1
    np.testing.assert_allclose(whole[0, 0], sigma.mean(), rtol=1e-5)


@shipped
def test_texture_everywhere_averages_all_pixels_and_a_constant_plane_is_nan(texture):
    assert not D.signal_mask(texture).any()
    sig = D.estimate_defocus(texture, **KW)
    np.testing.assert_allclose(D.defocus_patches(texture, patch_size=P, **KW), D.patch_means(sig, P), **CLOSE)
    blank = np.full((64, 64), 7, np.uint16)
    assert np.isnan(D.defocus_patches(blank, patch_size=P, **KW)).all()
    assert np.isfinite(D.defocus_patches(blank, patch_size=P, patch_pixels="all", **KW)).all()


@shipped
def test_stacks_plane_by_plane_and_dask_stays_lazy(cells, texture):
    stack = np.stack([cells, texture, np.zeros_like(cells)])
    want = D.estimate_defocus(stack, mode="patch", patch_size=P, **KW)
    for k, plane in enumerate(stack):  # each plane's own signal mask
        np.testing.assert_allclose(want[k], D.estimate_defocus(plane, mode="patch", patch_size=P, **KW), **CLOSE)
    assert np.isnan(want[2]).all() and np.isfinite(want[1]).all() and np.isnan(want[0]).any()

    reads = []
    lazy_in = da.from_array(stack, chunks=(1, 64, 96)).map_blocks(lambda b: reads.append(b.size) or b)
    reads.clear()  # dask's meta inference on empty blocks
    lazy = D.estimate_defocus(lazy_in, mode="patch", patch_size=P, **KW)
    assert isinstance(lazy, da.Array) and reads == []  # nothing read at call time
    assert lazy.shape == stack.shape and lazy.numblocks == (3, 1, 1)  # one task per plane
    np.testing.assert_allclose(lazy.compute(), want, **CLOSE)  # NaN in the same tiles
    grid = D.defocus_patches(lazy_in, patch_size=P, **KW)
    np.testing.assert_allclose(grid, want[:, ::P, ::P], **CLOSE)
    np.testing.assert_allclose(grid, D.defocus_patches(stack, patch_size=P, **KW), **CLOSE)


@shipped
def test_micrometres_pass_nan_tiles_through(cells):
    opt = {"na": 0.45, "wavelength_um": 0.46, "pixel_um": 0.65}
    grid = D.defocus_patches(cells, patch_size=P, **KW)
    um = D.sigma_to_defocus_um(grid, **opt)
    assert um.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(um), np.isnan(grid))
    finite = ~np.isnan(grid)
    np.testing.assert_array_equal(um[finite], D.sigma_to_defocus_um(grid[finite], **opt))
    lazy = D.sigma_to_defocus_um(da.from_array(grid, chunks=2), **opt)
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), um)
    with pytest.raises(ValueError, match="Inf"):
        D.sigma_to_defocus_um(np.array([1.0, np.inf]), **opt)


@shipped
def test_cli_patch_map_writes_nan_tiles(cells, tmp_path, capsys):
    import tifffile
    from distributed import LocalCluster

    from napari_linblur.cli.main import main
    from napari_linblur.io.readers import open_zstack

    src = tmp_path / "cells.tif"
    tifffile.imwrite(src, np.stack([cells, cells]))
    want = D.estimate_defocus(cells, mode="patch", patch_size=P, **KW)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        base = [str(src), "--device", "cpu", "--mode", "patch", "--patch-size", str(P), "--model", "defocus-default",
                "--scheduler", cluster.scheduler_address]
        assert main(["defocus-map", base[0], str(tmp_path / "s.zarr"), *base[1:]]) == 0
        assert main(["defocus-map", base[0], str(tmp_path / "um.zarr"), *base[1:], "--um", "--na", "0.45",
                     "--wavelength", "0.46", "--pixel-um", "0.65"]) == 0
        assert main(["defocus-map", base[0], str(tmp_path / "all.zarr"), *base[1:], "--patch-pixels", "all"]) == 0
    capsys.readouterr()
    every = np.asarray(open_zstack(tmp_path / "all.zarr").compute()).reshape(2, *cells.shape)
    assert not np.isnan(every).any()  # --patch-pixels all: the old average over every pixel of a tile
    np.testing.assert_allclose(every[0], D.estimate_defocus(cells, mode="patch", patch_size=P, patch_pixels="all",
                                                             **KW), atol=0.15)
    got = np.asarray(open_zstack(tmp_path / "s.zarr").compute()).reshape(2, *cells.shape)
    np.testing.assert_array_equal(np.isnan(got[0]), np.isnan(want))
    np.testing.assert_allclose(got[1], want, atol=0.15)  # the CLI's amp="auto" may run bf16
    um = np.asarray(open_zstack(tmp_path / "um.zarr").compute()).reshape(2, *cells.shape)
    np.testing.assert_array_equal(np.isnan(um), np.isnan(got))


def test_patch_means_with_a_mask():
    s = np.arange(30.0).reshape(5, 6)
    m = np.zeros((5, 6), bool)
    m[0, 0] = m[4, 5] = m[1, 1] = True
    got = D.patch_means(s, 4, mask=m)
    np.testing.assert_allclose(got, [[3.5, np.nan], [np.nan, 29.0]])  # the last tiles are smaller
    np.testing.assert_allclose(D.patch_means(s, 4, mask=np.ones_like(m)), D.patch_means(s, 4))
    with pytest.raises(ValueError, match="shape"):
        D.patch_means(s, 4, mask=m[:4])
    with pytest.raises(TypeError, match="boolean"):
        D.patch_means(s, 4, mask=m.astype(float))


def test_bad_patch_options_fail_before_any_work():
    img = np.ones((32, 32), np.uint16)
    for bad in ("foreground", None, True):
        with pytest.raises(ValueError, match="patch_pixels"):
            D.estimate_defocus(img, mode="patch", patch_pixels=bad, device="cpu")
    with pytest.raises(ValueError, match="mode='pixel'.*defocus_patches"):
        D.defocus_patches(img, mode="pixel", device="cpu")


def test_patch_options_of_a_per_pixel_map_are_said_to_be_unused(tmp_path, capsys):
    """patch_size / --patch-size without the patch mode used to be ignored silently (while --na without --um was
    refused): the API warns, the command line refuses before any work."""
    import tifffile

    from napari_linblur.cli.main import main

    img = np.ones((32, 32), np.uint16)
    with pytest.warns(UserWarning, match="patch_size is not used by mode='pixel'"):
        D.estimate_defocus(img, patch_size=32, device="cpu")
    with pytest.warns(UserWarning, match="patch_pixels is not used by mode='pixel'"):
        D.estimate_defocus(img, patch_pixels="all", device="cpu")
    src = tmp_path / "img.tif"
    tifffile.imwrite(src, np.stack([img, img]))
    for extra, says in ((["--patch-size", "32"], "--patch-size only applies to --mode patch"),
                        (["--patch-size", "32", "--patch-pixels", "all"], "--patch-size, --patch-pixels only apply"),
                        (["--na", "0.45"], "--na only converts the map to µm")):
        out = tmp_path / "o.zarr"
        assert main(["defocus-map", str(src), str(out), "--workers", "1", *extra]) == 2
        assert says in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("method", ["brenner", "defocus"])
def test_errors_scoring_a_plane_name_the_plane(method, lazy):
    rng = np.random.default_rng(0)
    stack = rng.random((2, 4, 32, 32))
    stack[1, 2, 5, 5] = np.nan
    arr = da.from_array(stack, chunks=(1, 1, 32, 32)) if lazy else stack
    kw = {"device": "cpu"} if method == "defocus" else {}
    if method == "defocus" and "defocus-default" not in list_models():
        pytest.skip("defocus-default not shipped")
    with pytest.raises(ValueError, match=r"stack contains NaN or Inf values.*\(at plane \(1, 2\) of the input\)"):
        D.focus_curve(arr, method=method, compute=True, **kw)
    with pytest.raises(ValueError, match=r"NaN or Inf.*at plane \(1, 2\) of the input") as err:
        D.best_focus(arr, method=method, **kw)
    assert str(err.value).count("at plane") == 1
    # a single plane has no index to name: the message is unchanged
    with pytest.raises(ValueError, match=r"NaN or Inf values; replace them \(e.g. np.nan_to_num\) first$"):
        D.focus_curve(stack[1, 2], method=method, **kw)


def test_a_stack_with_nan_names_the_plane_in_the_defocus_map_too():
    stack = np.ones((3, 16, 16))
    stack[2, 3, 3] = np.inf
    with pytest.raises(ValueError, match=r"img contains NaN or Inf values.*\(at plane 2 of the input\)$"):
        D.estimate_defocus(stack, device="cpu")
    with pytest.raises(ValueError, match=r"at plane 2 of the input\)$"):
        D.defocus_patches(stack, patch_size=8, device="cpu")


def test_pyramid_levels_of_a_patch_map_keep_nan_tiles_in_place():
    """OME-Zarr pyramids average 2x2 blocks: NaN (a tile without signal) must not eat its neighbours' pixels."""
    import dask.array as da

    from napari_linblur.io.omezarr import _downsample2

    a = np.full((6, 6), 2.0, np.float32)
    a[:3, :3] = np.nan  # an odd-sized NaN tile: the 2x2 block at (2, 2) mixes it with finite pixels
    got = _downsample2(da.from_array(a, chunks=6)).compute()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(got), [[True, False, False], [False, False, False], [False, False, False]])
    np.testing.assert_allclose(got[~np.isnan(got)], 2.0)


@shipped
def test_the_defocus_focus_score_is_the_median_over_signal_pixels(cells, sigma):
    """On nuclei over empty background the score reads the nuclei: the background, where no structure tells the
    network anything, would pull an all-pixel median elsewhere."""
    mask = D.signal_mask(cells)
    assert 0 < mask.mean() < 0.5
    score = D.focus_curve(cells[None], **KW)[0]
    np.testing.assert_allclose(score, -np.median(sigma[mask]), atol=1e-5)
    assert abs(np.median(sigma[mask]) - np.median(sigma)) > 0.5  # the mask matters on this plane
