"""The shared tiling path: exact for local operators, seam-free, any size, numpy and dask."""

import dask.array as da
import numpy as np
import pytest
import torch

from napari_linblur.inference.tiling import (
    MIN_TILE_SIDE,
    Cancelled,
    blend_window,
    map_planes,
    tile_starts,
    tiled_apply,
)


def _blur3(t):
    """A local operator (3x3 box filter, replicate padding) standing in for a network."""
    k = torch.ones(1, t.shape[1], 3, 3) / (9 * t.shape[1])
    return torch.nn.functional.conv2d(torch.nn.functional.pad(t, (1, 1, 1, 1), mode="replicate"), k)


def test_tile_starts_cover_and_overlap():
    starts = tile_starts(600, 256, 32)
    assert starts[0] == 0 and starts[-1] + 256 == 600
    assert all(b - a <= 256 - 32 for a, b in zip(starts, starts[1:]))
    assert tile_starts(100, 256, 32) == [0]


def test_identity_is_exact_for_any_size():
    rng = np.random.default_rng(0)
    for shape in [(4, 4), (17, 33), (300, 520)]:
        img = rng.random(shape, dtype=np.float32)
        out = tiled_apply(lambda t: t, img, tile=64, overlap=16)
        assert out.shape == (1, *shape)
        np.testing.assert_allclose(out[0], img, atol=1e-6)


def test_narrow_planes_run_on_tiles_of_at_least_16_px():
    # bf16 autocast on CPU gave unrepeatable outputs (σ of 1e14-1e36, or NaN) on tiles 8 px wide
    seen = []

    def record(t):
        seen.append(tuple(t.shape[-2:]))
        return t

    img = np.random.default_rng(1).random((128, 6), dtype=np.float32)
    np.testing.assert_allclose(tiled_apply(record, img, tile=64, overlap=8, multiple=8)[0], img, atol=1e-6)
    assert seen and all(min(s) >= MIN_TILE_SIDE == 16 for s in seen)
    seen.clear()
    tiled_apply(record, np.zeros((40, 40), np.float32), tile=8, overlap=4, multiple=4)  # a user's tile of 8 too
    assert seen and all(min(s) >= 16 for s in seen)


def test_a_narrow_plane_gives_one_repeatable_map_with_the_default_amp():
    import napari_linblur as nl

    plane = np.random.default_rng(3).random((128, 8)) * 1000 + 10
    maps = [nl.estimate_defocus(plane, device="cpu") for _ in range(3)]  # amp="auto": bf16 where native
    assert all(np.isfinite(m).all() and np.array_equal(m, maps[0]) for m in maps)
    np.testing.assert_allclose(maps[0], nl.estimate_defocus(plane, device="cpu", amp="off"), atol=0.2)


def test_no_seams_for_local_operator():
    # With overlap larger than the operator's reach, tiled == untiled away from the image border
    rng = np.random.default_rng(1)
    img = rng.random((200, 230), dtype=np.float32)
    whole = _blur3(torch.from_numpy(img)[None, None])[0, 0].numpy()
    tiled = tiled_apply(_blur3, img, tile=64, overlap=24)[0]
    interior = (slice(2, -2), slice(2, -2))
    np.testing.assert_allclose(tiled[interior], whole[interior], atol=1e-5)
    # and there is no step at tile boundaries: max gradient of the difference stays tiny
    assert np.abs(np.diff(tiled - whole, axis=1))[interior].max() < 1e-4


def test_blend_window_ramps_only_inner_sides():
    w = blend_window((32, 32), 8, (False, True, False, True))
    assert w[0, 0] == 1.0 and w[-1, -1] == 0.0 and w[:-2, :-2].min() > 0


def test_multi_channel_and_cancel():
    x = np.stack([np.ones((40, 40), np.float32), 2 * np.ones((40, 40), np.float32)])
    out = tiled_apply(lambda t: t.sum(1, keepdims=True), x, tile=16, overlap=4)
    np.testing.assert_allclose(out, 3.0, rtol=1e-6)  # blending weights sum to 1 within float32 rounding
    with pytest.raises(Cancelled):
        tiled_apply(lambda t: t, x, tile=16, overlap=4, should_stop=lambda: True)


def test_map_planes_numpy_and_dask_agree():
    stack = np.arange(2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8)
    ref = map_planes(lambda a, b: a - b, stack, stack / 2)
    lazy = map_planes(lambda a, b: a - b, da.from_array(stack, chunks=(1, 3, 8, 8)), stack / 2)
    assert isinstance(lazy, da.Array) and lazy.numblocks == (2, 3, 1, 1)
    np.testing.assert_allclose(lazy.compute(), ref)


@pytest.fixture(scope="module")
def tall_plane():
    """A 1096 x 304 plane of the ``bbbc006-like`` recipe (w1, 16 µm out of focus): taller than one tile (a
    multiple of 8, so that the whole-plane run needs no padding that would change its bottom rows)."""
    from napari_linblur.synth.dataset import synthesize_field
    from napari_linblur.synth.recipes import get_recipe

    recipe = get_recipe("bbbc006-like", keep_even=True, shape=(1096, 304))
    return synthesize_field(recipe, 0, 0)["image"][0, 4].astype(np.float32)


def test_network_tiles_agree_with_a_whole_plane_run(tall_plane):
    # the deblurring and defocus networks see far beyond 32 px: with the former tiling (at most 544 px, 32 px
    # overlap) this plane's tiles disagreed with a whole-plane run by up to 0.81 px of σ and 2.7 % of the intensity
    # span along the tile borders; with the 128 px network overlap, 0.009 px and 0.04 %
    # (docs/results/defocus_tiling.py)
    import napari_linblur as nl
    from napari_linblur.inference.tiling import auto_tile

    assert auto_tile(*tall_plane.shape) < tall_plane.shape[0]  # the default really tiles this plane
    whole = dict(tile=1096, overlap=0, amp="off", device="cpu")
    sig = nl.estimate_defocus(tall_plane, amp="off", device="cpu")
    assert float(np.abs(sig - nl.estimate_defocus(tall_plane, **whole)).max()) < 0.05
    out = nl.deblur(tall_plane, method="network", amp="off", device="cpu")
    ref = nl.deblur(tall_plane, method="network", **whole)
    span = float(np.percentile(ref, 99.9) - np.percentile(ref, 0.1))
    assert float(np.abs(out - ref).max()) < 0.005 * span


def test_any_tile_works_without_an_overlap_and_large_overlaps_are_refused_up_front():
    import dask.array as da

    import napari_linblur as nl
    from napari_linblur.models.drbnet import DRBNet

    img = np.random.default_rng(1).random((100, 120), dtype=np.float32) * 1000
    net = DRBNet(widths=(8, 8, 8), kernel_size=3)
    for tile in (16, 32, 64):  # the default overlap follows a small tile (a quarter of it), with a seam warning
        with pytest.warns(UserWarning, match=rf"overlapping by {tile // 4} px, less than the 128 px.*seams"):
            assert nl.deblur(img, method="network", model=net, tile=tile, device="cpu").shape == img.shape
        with pytest.warns(UserWarning, match="seams"):
            assert nl.estimate_defocus(img[:64, :64], tile=tile, device="cpu").shape == (64, 64)
    a = img[:48, :48]
    with pytest.warns(UserWarning, match=r"by 4 px, less than the \d+ px"):
        assert nl.synthesize_blur(a, a, 0.5, tile=16, device="cpu").shape == a.shape
    assert nl.deblur_pair(a, a, 0.5, tile=48, device="cpu").shape == a.shape
    import warnings

    with warnings.catch_warnings():  # the defaults and a given tile with the model's overlap: no warning
        warnings.simplefilter("error")
        nl.estimate_defocus(img, device="cpu")
        nl.deblur(img, method="network", model=net, tile=512, device="cpu")
        nl.synthesize_blur(a, a, 0.5, device="cpu")
    lazy = da.from_array(np.stack([img, img]), chunks=(1, 100, 120))
    for call in (lambda x: nl.estimate_defocus(x, overlap=600), lambda x: nl.deblur(x, overlap=1000)):
        for x in (img, lazy):  # refused when the call is made, before any dask compute
            with pytest.raises(ValueError, match=r"overlap \(\d+\) is too large for the automatic tile"):
                call(x)


def test_overlap_above_half_the_tile_is_refused_up_front():
    """overlap <= tile // 2: a tile of 16 with an overlap of 15 would advance 1 px per tile (hundreds of thousands
    of tiles per plane); refused when the call is made, naming the bound."""
    import napari_linblur as nl
    from napari_linblur.inference.tiling import check_tiling_options

    assert check_tiling_options(16, 8, default_overlap=8) == (16, 8, 1)
    assert check_tiling_options(33, 16, default_overlap=16) == (33, 16, 1)
    for tile, overlap in ((16, 15), (16, 9), (32, 31), (33, 17)):
        with pytest.raises(ValueError, match=rf"overlap \({overlap}\) must be at most half the tile "
                                             rf"\({tile} // 2 = {tile // 2}\)"):
            check_tiling_options(tile, overlap)
    img = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    for call in (lambda: nl.estimate_defocus(img, tile=16, overlap=15, device="cpu"),
                 lambda: nl.deblur(img, tile=16, overlap=15, device="cpu"),
                 lambda: nl.deblur(img, method="reblur-extrapolate", tile=16, overlap=15, device="cpu"),
                 lambda: nl.synthesize_blur(img, img, 0.5, tile=32, overlap=31, device="cpu"),
                 lambda: nl.deblur_pair(img, img, 0.5, tile=32, overlap=31, device="cpu")):
        with pytest.raises(ValueError, match="at most half the tile"):
            call()
    with pytest.raises(ValueError, match="at most half the tile"):
        tiled_apply(lambda t: t, img, tile=16, overlap=15)


def test_a_model_output_of_nan_for_a_finite_input_is_an_error_not_a_result():
    """Weights that are finite but broken (a diverged run, edited numbers) gave an all-NaN map with exit code 0;
    an output of the wrong size was a RuntimeError. Both are ValueErrors saying what is wrong with the model."""
    import torch

    x = np.random.default_rng(0).random((40, 40), dtype=np.float32)
    with pytest.raises(ValueError, match="NaN or Inf for a finite input: its weights are broken"):
        tiled_apply(lambda t: t * torch.tensor(float("inf")) - t * torch.tensor(float("inf")), x, tile=32,
                    overlap=8)
    with pytest.raises(ValueError, match="does not keep the image size"):
        tiled_apply(lambda t: t[..., :-1], x, tile=32, overlap=8)
    np.testing.assert_allclose(tiled_apply(lambda t: 2 * t, x, tile=32, overlap=8)[0], 2 * x, rtol=1e-6)


def test_deblur_checks_the_tiling_of_the_network_it_runs_once():
    """deblur(method='reblur-extrapolate') runs the autoencoder: one seam warning, naming the autoencoder's 64 px
    overlap (not also the deblurring network's 128 px), attributed to the caller's line."""
    import warnings

    import napari_linblur as nl

    img = np.random.default_rng(2).poisson(200, (160, 160)).astype(np.float32)
    smap = np.full(img.shape, 3.0, np.float32)
    for method, kw, need in (("reblur-extrapolate", {}, 64), ("guided", {"guide": "reblur-extrapolate"}, 64),
                             ("network", {}, 128)):
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            out = nl.deblur(img, method=method, sigma_map=None if method == "network" else smap, tile=128,
                            device="cpu", **kw)
        seams = [w for w in got if "overlapping by" in str(w.message)]
        assert out.shape == img.shape and len(seams) == 1, [str(w.message) for w in got]
        assert f"less than the {need} px" in str(seams[0].message) and seams[0].filename == __file__


def test_a_plane_side_off_the_network_multiple_meets_the_same_border_whatever_the_tiling():
    """A 697-row plane read in several tiles met the convolutions' zero padding at its last rows, in one tile a
    reflected border: the two defocus maps differed by up to 2.8 px near the bottom edge. Every tiling now pads the
    plane to the network's multiple by reflection."""
    import warnings

    import napari_linblur as nl
    from napari_linblur.optics.varying import render_spatially_varying
    from napari_linblur.synth.phantoms import cell_phantom

    rng = np.random.default_rng(0)
    content = cell_phantom((697, 200), rng=rng)[0]
    img = rng.poisson(np.clip(render_spatially_varying(content, np.full((697, 200), 3.0, np.float32)), 0, None)
                      * 2000 + 100).astype(np.uint16)
    auto = nl.estimate_defocus(img, device="cpu", amp="off")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # overlap 0 warns about seams on planes larger than one tile
        whole = nl.estimate_defocus(img, device="cpu", amp="off", tile=2048, overlap=0)
    assert np.abs(auto - whole)[-60:].max() < 0.05
