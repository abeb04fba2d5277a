"""Single-image deblurring (issue 5): DRBNet, deblur(method=...), guided deblurring, training task."""

import json

import numpy as np
import pytest
import tifffile
import torch

import napari_linblur as nl
from napari_linblur.inference.deblur_ops import auto_tile, guided_weights, reblur_alpha
from napari_linblur.models import registry
from napari_linblur.models.drbnet import (
    DRBNet,
    DynamicResidualBlock,
    _pad,
    dynamic_update,
)
from napari_linblur.training.deblur import DeblurData, DeblurTask, RealStackPairs, make_test_set
from napari_linblur.training.loop import TrainConfig, train

TINY = {"widths": (8, 8, 8), "kernel_size": 3, "blocks": 1}
SMALL_DATA = dict(patch=32, batch=2, pool=2, pool_side=96)


def _perturbed_net(seed=0):
    """A tiny DRBNet whose heads are not zero, so it really changes images."""
    torch.manual_seed(seed)
    net = DRBNet(**TINY)
    with torch.no_grad():
        for head in [drb.head for drb in net.drb] + [net.full_head]:
            head.weight.normal_(0, 0.02)
            head.bias.normal_(0, 0.02)
    return net.eval()


def _per_pixel_filter(x, kernels, k):
    """Reference: filter x (B, 1, H, W) with a different k x k kernel (B, k*k, H, W) at every pixel (im2col)."""
    b, _, h, w = x.shape
    cols = torch.nn.functional.unfold(_pad(x, k), k).reshape(b, k * k, h, w)
    return (cols * kernels).sum(1, keepdim=True)


def test_dynamic_update_delta_kernel_and_constant_images():
    """A kernel concentrated on the centre tap with gain g: e + g·(e − box mean) + r; constants stay constant."""
    x = torch.rand(2, 1, 9, 11)
    head = torch.zeros(2, 11, 9, 11)
    head[:, 4] = 60.0  # centre logit dominates -> softmax is (almost) the delta
    head[:, 9] = 0.5  # gain
    box = torch.nn.functional.avg_pool2d(_pad(x, 3), 3, stride=1)
    assert torch.allclose(dynamic_update(x, head, 3), x + 0.5 * (x - box), atol=1e-5)
    const = torch.full((2, 1, 9, 11), 3.0)
    head = torch.randn(2, 11, 9, 11)
    head[:, 10] = 0.0  # no residual
    assert (dynamic_update(const, head, 3) - 3.0).abs().max() < 1e-5  # zero-sum kernel kills constants


@pytest.mark.parametrize("k", [3, 5])
def test_dynamic_update_online_softmax_equals_explicit_form(k):
    """The fused update equals estimate + gain·(softmax-kernel ⊛ e − box mean) + residual, written out."""
    torch.manual_seed(k)
    est = torch.rand(2, 1, 13, 10)
    head = torch.randn(2, k * k + 2, 13, 10) * 3  # large logits: the max subtraction must keep it finite
    kk = k * k
    probs = torch.softmax(head[:, :kk], 1)
    box = torch.nn.functional.avg_pool2d(_pad(est, k), k, stride=1)
    expected = est + head[:, kk : kk + 1] * (_per_pixel_filter(est, probs, k) - box) + head[:, kk + 1 :]
    got = dynamic_update(est, head, k)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, expected, atol=1e-5)
    # bf16 head outputs in channels-last layout (the CPU inference path) give the same update
    got_cl = dynamic_update(est, head.to(torch.bfloat16).float().contiguous(memory_format=torch.channels_last), k)
    ref_cl = dynamic_update(est, head.to(torch.bfloat16).float(), k)
    assert torch.allclose(got_cl, ref_cl, atol=1e-6)


def test_dynamic_block_update_rule():
    blk = DynamicResidualBlock(4, 3)
    est, feats = torch.rand(1, 1, 8, 8), torch.rand(1, 4, 8, 8)
    assert torch.equal(blk(est, feats), est)  # zero heads: identity
    with torch.no_grad():
        blk.head.bias[-1] = 0.25  # residual channel only
    assert torch.allclose(blk(est, feats), est + 0.25)


def test_drbnet_scales_identity_init_and_errors():
    net = DRBNet(**TINY)
    x = torch.rand(2, 1, 48, 40)
    outs = net(x, return_all=True)
    assert [tuple(o.shape[-2:]) for o in outs] == [(6, 5), (12, 10), (24, 20), (48, 40)]
    assert torch.allclose(outs[-1], x, atol=1e-5)
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.rand(1, 1, 30, 32))
    with pytest.raises(ValueError, match="widths"):
        DRBNet(widths=(4, 8, 8, 8))
    with pytest.raises(ValueError, match="kernel_size"):
        DRBNet(widths=(4, 4, 4), kernel_size=4)
    big = DRBNet()
    assert sum(p.numel() for p in big.parameters()) * 4 < 15e6


def test_deblur_network_any_size_dtype_units_and_dask():
    net = _perturbed_net()
    rng = np.random.default_rng(1)
    img = rng.integers(100, 4000, (37, 53)).astype(np.uint16)
    out = nl.deblur(img, method="network", model=net, device="cpu")
    assert out.shape == img.shape and out.dtype == np.float32
    # input units: same order of magnitude as the input, not the normalized [0, 1] range
    assert abs(float(np.median(out)) - float(np.median(img))) < 0.3 * float(np.median(img))
    identity = nl.deblur(img, method="network", model=DRBNet(**TINY), device="cpu")
    np.testing.assert_allclose(identity, img.astype(np.float32), atol=0.5)
    # stacks plane by plane, dask stays lazy and equals numpy
    import dask.array as da

    stack = np.stack([img, img[::-1]]).astype(np.float32)
    lazy = nl.deblur(da.from_array(stack, chunks=(1, 37, 53)), method="network", model=net, device="cpu")
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), nl.deblur(stack, method="network", model=net, device="cpu"),
                               rtol=1e-5, atol=1e-3)
    # tiled path equals one big tile up to blending at seams
    large = rng.random((80, 96)).astype(np.float32)
    tiled = nl.deblur(large, method="network", model=net, device="cpu", tile=48, overlap=16)
    whole = nl.deblur(large, method="network", model=net, device="cpu", tile=96)
    assert np.abs(tiled - whole).mean() < 0.02


def test_deblur_errors_name_the_argument():
    net = DRBNet(**TINY)
    img = np.zeros((16, 16), np.float32)
    with pytest.raises(ValueError, match="method"):
        nl.deblur(img, method="magic", model=net)
    with pytest.raises(ValueError, match="img"):
        nl.deblur(np.zeros(16), method="network", model=net)
    with pytest.raises(TypeError, match="img"):
        nl.deblur(None, method="network", model=net)
    with pytest.raises(ValueError, match="sigma_map"):
        nl.deblur(img, method="guided", model=net, sigma_map=np.zeros((8, 8)))
    # a NaN in a lazy map is refused when the plane is computed (it used to skip deblurring silently), and so is a
    # negative σ, for numpy and dask alike
    import dask.array as da

    bad = np.ones((2, 16, 16), np.float32)
    bad[1, 3, 3] = np.nan
    stack = da.from_array(np.ones((2, 16, 16), np.float32), chunks=(1, 16, 16))
    with pytest.raises(ValueError, match="sigma_map contains NaN"):
        nl.deblur(stack, method="guided", model=net, sigma_map=da.from_array(bad, chunks=(1, 16, 16))).compute()
    for smap in (np.full((16, 16), -0.5, np.float32), da.full((16, 16), -0.5, chunks=16)):
        with pytest.raises(ValueError, match="sigma_map holds negative values"):
            np.asarray(nl.deblur(img, method="guided", model=net, sigma_map=smap))
    with pytest.raises(ValueError, match="sigma_r"):
        nl.deblur(img, method="reblur-extrapolate", sigma_r=-1)
    ae_like = DRBNet(**TINY)
    ae_like.task = "ae"
    with pytest.raises(ValueError, match="deblur"):
        nl.deblur(img, method="network", model=ae_like)


def test_reblur_alpha_formula():
    assert reblur_alpha(0.0, 2.0) == 1.0
    for sb, sr in [(1.0, 2.0), (3.0, 1.5), (2.0, 2.0)]:
        sc = np.hypot(sb, sr)
        assert reblur_alpha(sb, sr) == pytest.approx((sc - sb) / sc)
    # the blurrier the input, the further we extrapolate (smaller alpha)
    assert reblur_alpha(4.0) < reblur_alpha(2.0) < reblur_alpha(0.5)


def test_auto_tile_minimises_work():
    assert auto_tile(1024, 1024) == 1024  # one tile: no borders, and the least work
    assert auto_tile(2048, 2048) == 768  # 3 x 3 tiles at the 128 px network overlap
    assert auto_tile(1024, 1024, overlap=32, cap=544) == 528
    assert auto_tile(40, 40) >= 40


def test_guided_leaves_in_focus_region_unchanged():
    """Left half in focus (σ = 0.3 px), right half defocused: the left comes back unchanged within noise."""
    from napari_linblur.optics.varying import render_spatially_varying

    rng = np.random.default_rng(3)
    sharp = (rng.random((96, 128)) > 0.97).astype(np.float64) * 800 + 100
    smap = np.full(sharp.shape, 0.3, np.float32)
    smap[:, 64:] = 3.0
    blurry = render_spatially_varying(sharp, smap) + rng.normal(0, 5, sharp.shape)
    net = _perturbed_net(1)
    out = nl.deblur(blurry, method="guided", model=net, sigma_map=smap, device="cpu")
    full = nl.deblur(blurry, method="network", model=net, device="cpu")
    w = guided_weights(smap)
    left = np.s_[:, :24]
    np.testing.assert_array_equal(out[left], blurry[left].astype(np.float32))
    assert float(w[left].max()) == 0.0 and float(w[:, -24:].min()) == 1.0
    np.testing.assert_allclose(out[:, -24:], full[:, -24:], rtol=1e-6, atol=1e-3)
    assert np.abs(full[left] - blurry[left]).mean() > 1.0  # the network alone would have changed it
    # a uniformly in-focus image comes back exactly
    flat = nl.deblur(blurry, method="guided", model=net, sigma_map=np.zeros_like(smap), device="cpu")
    np.testing.assert_array_equal(flat, blurry.astype(np.float32))


def test_guided_weights_refuse_a_map_that_is_not_sigma():
    """guided_weights is public: a NaN or negative σ map is an error naming it, not all-NaN weights."""
    smap = np.full((128, 128), 2.0, np.float32)
    smap[:70, :70] = np.nan
    with pytest.raises(ValueError, match="sigma_map.*NaN"):
        guided_weights(smap)
    with pytest.raises(ValueError, match="sigma_map holds negative values"):
        guided_weights(np.full((64, 64), -1.0, np.float32))


def test_task_batches_are_deterministic_and_pairs_are_exact():
    task = DeblurTask(stage=1, config=TINY, data=DeblurData(**SMALL_DATA), seed=5, val_size=2)
    a, b = task.batch(3), task.batch(3)
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])
    assert not torch.equal(task.batch(4)["x"], a["x"])
    assert a["x"].shape == (2, 1, 32, 32)
    # exact correspondence: re-blurring the target with the true PSF gives the noise-free input
    items = make_test_set("focus", 1, side=48, d_um=6.0, data=DeblurData(**SMALL_DATA))
    from napari_linblur.optics.convolve import fft_convolve

    it = items[0]
    reblurred = fft_convolve(it["sharp"], it["psf"])
    inner = np.s_[12:-12, 12:-12]
    noise = it["blurry"][inner] - reblurred[inner]
    assert abs(float(noise.mean())) < 3 * np.sqrt(it["photons"]) and noise.std() < 3 * np.sqrt(it["photons"] + 4)


def test_depth_band_draws_that_fraction_in_the_band_and_leaves_uniform_runs_unchanged():
    from napari_linblur.training.deblur import _Renderer

    uniform = _Renderer(DeblurData(**SMALL_DATA), seed=3)
    banded = _Renderer(DeblurData(**SMALL_DATA, depth_band=(2.5, 6.0, 0.5)), seed=3)
    rng = np.random.default_rng(0)
    d_uni = np.array([uniform.draw_depth(rng) for _ in range(4000)])
    assert d_uni.min() >= 0 and d_uni.max() <= 10 and abs(np.mean((d_uni >= 2.5) & (d_uni <= 6.0)) - 0.35) < 0.03
    # the default consumes exactly one draw per depth (older seeds replay the same batches)
    assert np.allclose(d_uni, np.random.default_rng(0).uniform(0.0, 10.0, 4000))
    rng = np.random.default_rng(0)
    d_band = np.array([banded.draw_depth(rng) for _ in range(4000)])
    # half from the band, half uniform (35 % of those in the band): 0.5 + 0.5 * 0.35
    assert abs(np.mean((d_band >= 2.5) & (d_band <= 6.0)) - 0.675) < 0.03
    assert d_band.min() >= 0 and d_band.max() <= 10
    assert DeblurData(depth_band=[2.5, 6.0, 0.5]).to_dict()["depth_band"] == [2.5, 6.0, 0.5]
    for bad in [(2.0, 1.0, 0.5), (1.0, 12.0, 0.5), (1.0, 2.0, 0.0), (1.0, 2.0)]:
        with pytest.raises(ValueError, match="depth_band"):
            DeblurData(**SMALL_DATA, depth_band=bad).validate()


def test_psnr_pixel_loss_is_mean_log_mse_and_weighs_clean_pairs_up():
    task = DeblurTask(stage=1, config=TINY, data=DeblurData(**SMALL_DATA), seed=5, val_size=2, pixel_loss="psnr")
    torch.manual_seed(0)
    model = task.build_model()
    batch = task.batch(0)
    loss, parts = task.loss(model, batch)
    with torch.no_grad():
        outs = model(batch["x"], return_all=True)
    expected = 0.0
    for i, out in enumerate(outs):
        f = 2 ** (len(outs) - 1 - i)
        tgt = torch.nn.functional.avg_pool2d(batch["y"], f) if f > 1 else batch["y"]
        term = torch.log10(((out - tgt) ** 2).mean(dim=(1, 2, 3)) + 1e-6).mean()
        expected += (1.0 if f == 1 else 0.5 / f) * float(term)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert "l1" in parts and loss.requires_grad
    # the gradient of a pair's log-MSE is its MSE gradient divided by its MSE: an error 10x smaller pulls 10x harder
    # (per unit of squared error) than with a plain MSE
    err = torch.tensor([[0.1], [1.0]], requires_grad=True)
    torch.log10((err ** 2).mean(dim=1) + 1e-6).mean().backward()
    g = err.grad.abs().squeeze()
    assert float(g[0] / g[1]) == pytest.approx(10.0, rel=1e-3)
    with pytest.raises(ValueError, match="pixel_loss"):
        DeblurTask(stage=1, config=TINY, data=DeblurData(**SMALL_DATA), pixel_loss="l2")


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan")])
def test_real_fraction_outside_0_1_is_refused_naming_it(fraction):
    with pytest.raises(ValueError, match=r"real_fraction \(--real-fraction\) must be a fraction in \[0, 1\]"):
        DeblurTask(stage=2, config=TINY, data=DeblurData(**SMALL_DATA), real_fraction=fraction)


def test_two_stage_training_with_feature_loss(tmp_path):
    from napari_linblur.models.autoencoder import LinearLatentAE

    cfg = dict(steps=6, lr=3e-3, seed=1, device="cpu", ckpt_every=3, val_every=3, log_every=3, progress=False,
               warmup=1)
    t1 = DeblurTask(stage=1, config=TINY, data=DeblurData(**SMALL_DATA), seed=1, val_size=2)
    r1 = train(t1, TrainConfig(out=str(tmp_path / "s1"), **cfg))
    m1 = registry.load_model(r1.model_path, device="cpu")
    assert m1.task == "deblur" and m1.card["stage"] == 1 and m1.card["blind"] is True
    ae = LinearLatentAE(channels=[8, 8], latent_channels=4, blocks=1)
    t2 = DeblurTask(stage=2, config=TINY, data=DeblurData(**SMALL_DATA), seed=2, init=str(r1.model_path),
                    feature_weight=0.5, feature_ae=ae, val_size=2)
    start = t2.build_model()
    assert all(torch.equal(start.state_dict()[k], m1.state_dict()[k]) for k in m1.state_dict())
    loss, parts = t2.loss(start, t2.batch(0))
    assert "feat" in parts and parts["feat"] > 0 and loss.requires_grad
    assert not any(p.requires_grad for p in ae.parameters())  # the autoencoder is frozen
    r2 = train(t2, TrainConfig(out=str(tmp_path / "s2"), **cfg))
    card = json.loads(r2.model_path.with_suffix(".json").read_text())
    assert card["stage"] == 2 and card["loss"]["feature_weight"] == 0.5 and card["init"]["from"] == str(r1.model_path)
    assert card["init"]["sha256"] == registry.sha256_file(r1.model_path)
    assert card["init"]["command"] == json.loads(r1.model_path.with_suffix(".json").read_text())["training"]["command"]
    out = nl.deblur(np.random.default_rng(0).random((20, 30)), method="network", model=r2.model_path, device="cpu")
    assert out.shape == (20, 30)
    # export as a shipped model: the card keeps every leg in the order given, not sorted by name
    from napari_linblur.training.deblur import export_default

    path = export_default(str(r2.model_path), str(tmp_path / "shipped.safetensors"),
                          runs={"b-stage1": str(r1.model_path), "a-stage2": str(r2.model_path)})
    exported = registry.read_card(str(path))
    assert [leg["name"] for leg in exported["legs_in_order"]] == ["b-stage1", "a-stage2"]
    assert exported["legs_in_order"][0]["command"] == m1.card["training"]["command"]
    assert set(exported["stages"]) == {"b-stage1", "a-stage2"} and exported["training_minutes_total"] >= 0


def test_reblur_extrapolate_uses_latent_extrapolation_with_map_alpha():
    """reblur-extrapolate is deblur_pair(img, img re-blurred by sigma_r, alpha from the map's median sigma)."""
    from napari_linblur.models.autoencoder import LinearLatentAE
    from napari_linblur.optics.convolve import fft_convolve
    from napari_linblur.optics.psf import gaussian_psf

    torch.manual_seed(0)
    ae = LinearLatentAE(channels=[8, 8], latent_channels=4, blocks=1).eval()
    img = np.random.default_rng(0).random((32, 40)).astype(np.float32) * 500
    out = nl.deblur(img, method="reblur-extrapolate", model=ae, sigma_map=np.full(img.shape, 2.0), sigma_r=2.0,
                    device="cpu")
    assert out.shape == img.shape and out.dtype == np.float32
    reblurred = fft_convolve(img.astype(np.float64), gaussian_psf(2.0)).astype(np.float32)
    assert float(np.abs(reblurred - img).mean()) > 0  # c is really re-blurred
    ref = nl.deblur_pair(img, reblurred, 1 - 2.0 / np.hypot(2.0, 2.0), model=ae, device="cpu")
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)
    # an in-focus image (σ = 0) gives α = 1: returned as is, no extrapolation
    same = nl.deblur(img, method="reblur-extrapolate", model=ae, sigma_map=np.zeros(img.shape), device="cpu")
    np.testing.assert_array_equal(same, img)


def test_dynamic_update_equals_explicit_zero_sum_kernel():
    from napari_linblur.models.drbnet import dynamic_update

    torch.manual_seed(0)
    k = 3
    est, head = torch.rand(2, 1, 12, 10), torch.randn(2, k * k + 2, 12, 10)
    logits, gain, res = head[:, : k * k], head[:, k * k : k * k + 1], head[:, k * k + 1 :]
    kernel = gain * (torch.softmax(logits, 1) - 1.0 / (k * k))
    assert torch.allclose(kernel.sum(1), torch.zeros(2, 12, 10), atol=1e-5)  # zero-sum
    patches = torch.nn.functional.unfold(torch.nn.functional.pad(est, (1, 1, 1, 1), mode="reflect"), k)
    explicit = est + (patches.view(2, k * k, 12, 10) * kernel).sum(1, keepdim=True) + res
    assert torch.allclose(dynamic_update(est, head, k), explicit, atol=1e-5)


def test_shared_subpixel_update_equals_the_per_pixel_form():
    """The 'shared' full-scale block = dynamic_update with each 2x2 cell's kernel repeated on its 4 pixels."""
    from napari_linblur.models.drbnet import dynamic_update, shared_subpixel_update

    torch.manual_seed(1)
    for k in (3, 5):
        kk = k * k
        est, head = torch.rand(2, 1, 16, 12), torch.randn(2, kk + 1 + 4, 8, 6)
        per_cell = head[:, : kk + 1].repeat_interleave(2, -2).repeat_interleave(2, -1)
        explicit = torch.cat([per_cell, torch.nn.functional.pixel_shuffle(head[:, kk + 1 :], 2)], 1)
        assert torch.allclose(shared_subpixel_update(est, head, k), dynamic_update(est, explicit, k), atol=1e-5)


def test_one_tap_blocks_predict_only_a_residual_and_lean_layout():
    from napari_linblur.models.drbnet import CONFIGS, dynamic_update, head_channels, shrink

    est, res = torch.rand(1, 1, 8, 8), torch.randn(1, 1, 8, 8)
    assert head_channels(1) == 1 and head_channels(3) == 11
    assert torch.equal(dynamic_update(est, res, 1), est + res)
    x = torch.rand(1, 1, 32, 24)
    for cfg in ({"widths": (8, 8, 8), "kernel_size": (1, 3, 1, 3)}, CONFIGS["lean"]):
        net = DRBNet(**cfg).eval()
        with torch.no_grad():
            assert torch.allclose(net(x), x, atol=1e-5)  # identity at initialisation in every layout
    with pytest.raises(ValueError, match="full_kernel"):
        DRBNet(widths=(8, 8, 8), full_kernel="nope")
    with pytest.raises(ValueError, match="up"):
        DRBNet(widths=(8, 8, 8), up="nope")
    # the lean layout is a different network from the default: its card records the two layout keys
    lean = DRBNet(**CONFIGS["lean"])
    assert lean.config()["full_kernel"] == "shared" and lean.config()["up"] == "conv_upsample"
    assert "full_kernel" not in DRBNet().config()  # older cards (and the shipped default) have neither key
    # shrinking keeps the layout; the shared full-scale block can drop its kernel to a residual
    torch.manual_seed(0)
    for p in lean.parameters():
        torch.nn.init.normal_(p, std=0.05)
    small = shrink(lean.eval(), (12, 32, 48), (1, 3, 5, 5))
    assert (small.full_kernel, small.up_order) == ("shared", "conv_upsample")
    assert small.full_head.out_channels == 4
    with torch.no_grad():
        y = small(torch.rand(1, 1, 32, 32))
    assert torch.isfinite(y).all()


@pytest.mark.skipif("deblur-default" not in registry.list_models(), reason="deblur-default not shipped")
def test_shipped_deblur_default_card_size_and_gain():
    from napari_linblur.metrics.image import psnr

    card = registry.read_card("deblur-default")
    assert card["architecture"] == "DRBNet" and card["task"] == "deblur" and card["blind"] is True
    # the card records every training leg: stage-1 runs (continued with --init) and the stage-2 fine-tuning
    assert "stage2" in card["stages"] and all("train deblur --stage 2" in st["training"]["command"]
                                              for name, st in card["stages"].items() if name.startswith("stage2"))
    assert all("train deblur --stage 1" in st["training"]["command"]
               for name, st in card["stages"].items() if name.startswith("stage1"))
    # the chain starts from scratch: its first stage-1 leg has no --init (or the card names the run it came from)
    first = card["stage1_init"]["training"] if "stage1_init" in card else card["stages"]["stage1"]["training"]
    assert "train deblur --stage 1" in first["command"] and ("--init" not in first["command"] or "stage1_init" in card)
    assert (registry.WEIGHTS_DIR / "deblur-default.safetensors").stat().st_size <= 15e6
    # the legs in the order they ran (the legs of a continued model first), every one a recorded stage, within
    # about an hour of training (66.9 min since session 19's small-defocus legs, timed with the other core busy)
    legs = card["legs_in_order"]
    assert legs[-1]["name"].startswith("stage2") and {leg["name"] for leg in legs} == set(card["stages"])
    assert card["training_minutes_total"] == round(sum(leg["seconds"] for leg in legs) / 60, 1) <= 70
    # a held-out through-focus plane (seed never used in training) gets sharper, blind
    (item,) = make_test_set("focus", 1, seed=4_242_424, side=96, d_um=6.0)
    out = nl.deblur(item["blurry"], device="cpu")  # method="auto" -> the network
    assert psnr(item["sharp"], out) > psnr(item["sharp"], item["blurry"]) + 1.0


def test_stage2_pairs_from_real_stacks(tmp_path):
    """--data: pairs (plane z_k -> the sharpest plane) cropped from stacks read with open_zstack."""
    import tifffile
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    sharp = ndi.gaussian_filter(rng.random((48, 56)), 0.7) * 1000
    stack = np.stack([ndi.gaussian_filter(sharp, s) for s in (3.0, 1.5, 0.0, 1.5, 3.0)]).astype(np.float32)
    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, stack)
    task = DeblurTask(stage=2, config=TINY, data=DeblurData(**SMALL_DATA), real_data=str(tif), real_fraction=1.0,
                      val_size=1)
    assert task.real.focus == [2]
    b = task.batch(0)
    assert b["x"].shape == (2, 1, 32, 32)
    # targets are crops of the in-focus plane, inputs crops of the others (both normalized by the input's map)
    blurry, target, info = task.real.pair(np.random.default_rng(1), 32)
    assert info["plane"] != 2
    assert any(np.array_equal(target, stack[2, y:y + 32, x:x + 32]) for y in range(17) for x in range(25))


def test_stage2_pairs_from_a_synth_dataset_use_every_field(tmp_path):
    """A ``linblur synth`` dataset (one image group per field, as README's first command makes) is read as
    stacks, one per field and channel, like the autoencoder and defocus trainers read it."""
    from scipy import ndimage as ndi

    from napari_linblur.io.readers import open_zstack
    from napari_linblur.synth import get_recipe, write_synthetic_dataset

    path = write_synthetic_dataset(tmp_path / "d.zarr", get_recipe("training", shape=(40, 40)), fields=2, seed=0,
                                   progress=False)
    pairs = RealStackPairs(str(path), channel=0, max_offset=2)
    assert len(pairs.stacks) == 2 and len(pairs.focus) == 2
    whole = np.asarray(open_zstack(path / "field_001", channel=0))
    # only the planes a pair can use are held: focus ± max_offset, from the whole stack's focus
    f, lo = pairs.focus[1], pairs.first[1]
    assert f == int(np.argmax([ndi.laplace(p.astype(np.float64)).var() for p in whole]))
    assert lo == max(0, f - 2) and pairs.n_planes[1] == len(whole)
    np.testing.assert_array_equal(pairs.stacks[1], whole[lo : min(len(whole), f + 3)])
    one = RealStackPairs(str(path / "field_001"), channel=0, max_offset=2)
    for seed in range(12):  # pairs are crops of whole-stack planes: the in-focus one and one 1-2 planes away
        b, t, info = one.pair(np.random.default_rng(seed), 32)
        assert 1 <= abs(info["plane"] - f) <= 2
        assert any(np.array_equal(t, whole[f, y:y + 32, x:x + 32]) and
                   np.array_equal(b, whole[info["plane"], y:y + 32, x:x + 32]) for y in range(9) for x in range(9))
    blurry, target, info = pairs.pair(np.random.default_rng(0), 32)
    assert blurry.shape == target.shape == (32, 32)


def test_shrink_keeps_function_where_it_can_and_trains_from_a_larger_init(tmp_path):
    """models.drbnet.shrink: same config -> same outputs; smaller kernels keep the inner taps; a task with a
    smaller config and --init of a larger model starts from the shrunk weights."""
    from napari_linblur.models.drbnet import shrink

    big = _perturbed_net(3)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        same = shrink(big, big.widths, big.kernel_size)
        assert torch.allclose(same(x), big(x), atol=1e-6)
        # an identity network stays the identity whatever is removed
        ident = shrink(DRBNet(widths=(8, 8, 8), kernel_size=(3, 5, 5, 5)).eval(), (6, 8, 8), (3, 3, 3, 5))
        assert ident.widths == (6, 8, 8) and ident.kernel_size == (3, 3, 3, 5)
        assert torch.allclose(ident(x), x, atol=1e-5)
    with pytest.raises(ValueError, match="1/2-resolution width"):
        shrink(big, (8, 4, 8), big.kernel_size)
    with pytest.raises(ValueError, match="kernel sizes"):
        shrink(big, big.widths, 5)
    path = tmp_path / "big.safetensors"
    registry.save_model(big, path, {"architecture": "DRBNet", "task": "deblur", "config": big.config()})
    task = DeblurTask(stage=1, config={"widths": (6, 8, 8), "kernel_size": 3, "blocks": 1},
                      data=DeblurData(**SMALL_DATA), init=str(path), val_size=1)
    small = task.build_model()
    assert small.widths == (6, 8, 8) and small.training
    # the kept channels are copied, not re-initialised
    kept = small.state_dict()["enc.1.0.c1.weight"]
    assert torch.equal(kept, big.state_dict()["enc.1.0.c1.weight"])
    # shrinking keeps the layout: asking for another one is a clear error, not a silently mislabelled model
    other = DeblurTask(stage=1, config={"widths": (6, 8, 8), "kernel_size": 3, "blocks": 1, "full_kernel": "shared",
                                        "up": "conv_upsample"},
                       data=DeblurData(**SMALL_DATA), init=str(path), val_size=1)
    with pytest.raises(ValueError, match="layout"):
        other.build_model()


def test_reblur_extrapolate_honours_cancel_progress_and_tiling_and_never_returns_the_input():
    from napari_linblur.inference.tiling import Cancelled
    from napari_linblur.models.autoencoder import LinearLatentAE

    torch.manual_seed(0)
    ae = LinearLatentAE(channels=[8, 8], latent_channels=4, blocks=1).eval()
    img = np.random.default_rng(1).random((64, 80)).astype(np.float32) * 500
    smap = np.full(img.shape, 2.0, np.float32)
    with pytest.raises(Cancelled):
        nl.deblur(img, method="reblur-extrapolate", model=ae, sigma_map=smap, device="cpu",
                  should_stop=lambda: True)
    seen = []
    big = nl.deblur(img, method="reblur-extrapolate", model=ae, sigma_map=smap, device="cpu",
                    progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1]
    small = nl.deblur(img, method="reblur-extrapolate", model=ae, sigma_map=smap, device="cpu", tile=32,
                      overlap=8)
    assert np.abs(small - big).max() > 0  # the tiling reaches the autoencoder
    # guided by re-blur + extrapolation: the same options reach the autoencoder, and progress counts its tiles
    # (64 x 80 px: one tile)
    seen.clear()
    kw = dict(method="guided", guide="reblur-extrapolate", model=ae, sigma_map=smap, device="cpu")
    g1 = nl.deblur(img, **kw, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 1)]
    assert np.abs(nl.deblur(img, **kw, tta=2) - g1).max() > 0
    assert np.abs(nl.deblur(img, **kw, tile=32, overlap=8) - g1).max() > 0
    with pytest.raises(Cancelled):
        nl.deblur(img, **kw, should_stop=lambda: True)
    # nothing to deblur: a copy of the input, never the caller's array itself
    flat = nl.deblur(img, method="guided", model=DRBNet(**TINY), sigma_map=np.zeros_like(img), device="cpu")
    assert flat is not img and np.shares_memory(flat, img) is False
    flat[:] = 0
    assert img.max() > 0


def test_tiling_options_and_tiny_alpha_are_refused():
    img = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    for kw, err, says in (({"batch_size": -1}, ValueError, "batch_size"), ({"batch_size": 0}, ValueError,
                          "batch_size"), ({"batch_size": 1.5}, TypeError, "batch_size"),
                          ({"tile": "x"}, TypeError, "tile"), ({"tile": 32, "overlap": 32}, ValueError, "overlap")):
        with pytest.raises(err, match=says):
            nl.synthesize_blur(img, img, 0.5, device="cpu", **kw)
        with pytest.raises(err, match=says):
            nl.deblur_pair(img, img, 0.5, device="cpu", **kw)
    with pytest.raises(ValueError, match="overlap"):
        nl.deblur(img, method="network", model=DRBNet(**TINY), tile=32, overlap=40)
    with pytest.raises(ValueError, match="below 0.01"):
        nl.deblur_pair(img, img, 1e-8, device="cpu")
    assert nl.deblur(img, method="reblur-extrapolate", sigma_map=np.zeros_like(img), sigma_r=np.float32(2.0),
                     device="cpu").shape == img.shape  # a numpy scalar is a number


def test_infinite_or_inconsistent_deblur_parameters_are_refused_before_any_work(monkeypatch):
    """sigma_r, sigma_focus and sigma_full must be finite, positive (sigma_focus >= 0) and ordered; checked at the
    top of deblur, before the defocus map is estimated or a model loads."""
    from napari_linblur.inference import defocus_ops
    from napari_linblur.models import registry as reg

    def no_work(*a, **k):
        raise AssertionError("the options are checked first")

    monkeypatch.setattr(defocus_ops, "estimate_defocus", no_work)
    monkeypatch.setattr(reg, "load_model", no_work)
    img = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    cases = [(dict(method="reblur-extrapolate", sigma_r=np.inf), "sigma_r"),
             (dict(method="reblur-extrapolate", sigma_r=float("nan")), "sigma_r"),
             (dict(method="guided", sigma_full=np.inf), "sigma_full"),
             (dict(method="guided", sigma_focus=np.nan), "sigma_focus"),
             (dict(method="guided", sigma_focus=-1.0), "sigma_focus"),
             (dict(method="guided", sigma_focus=2.0, sigma_full=1.0), r"sigma_full > sigma_focus"),
             (dict(method="guided", sigma_full="2"), "sigma_full")]
    for kw, says in cases:
        with pytest.raises((ValueError, TypeError), match=says):
            nl.deblur(img, device="cpu", **kw)


def test_deblur_cli_refuses_an_infinite_sigma_r_up_front(tmp_path, capsys):
    import tifffile

    from napari_linblur.cli.main import main

    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, np.random.default_rng(0).poisson(300, (2, 32, 32)).astype(np.uint16))
    for value in ("inf", "nan", "-1"):
        out = tmp_path / f"out_{value}.zarr"
        assert main(["deblur", str(tif), str(out), "--method", "reblur-extrapolate", "--sigma-r", value,
                     "--device", "cpu", "--workers", "1"]) == 2
        assert "--sigma-r must be a finite number > 0" in capsys.readouterr().err and not out.exists()


def test_options_of_other_methods_warn_or_fail(tmp_path, capsys):
    """An option the chosen method does not use is a UserWarning naming it; an unused option that is also invalid
    (a missing model file, a negative σ map) is an error, as it would be for a method that uses it."""
    import warnings

    from napari_linblur.models.hrnet import HDMENet

    img = np.random.default_rng(0).random((32, 32)).astype(np.float32) * 100
    net = DRBNet(**TINY)
    ref = nl.deblur(img, method="network", model=net, device="cpu")
    with pytest.warns(UserWarning, match=r"sigma_map is not used by method='network'"):
        out = nl.deblur(img, method="network", model=net, sigma_map=np.ones_like(img), device="cpu")
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(ValueError, match="sigma_map holds negative values"):
        nl.deblur(img, method="network", model=net, sigma_map=-np.ones_like(img), device="cpu")
    with pytest.raises(ValueError, match="sigma_map contains NaN"):
        nl.deblur(img, method="network", model=net, sigma_map=np.full(img.shape, np.nan), device="cpu")
    with pytest.raises(FileNotFoundError, match="x.safetensors"):
        nl.deblur(img, method="network", model=net, defocus_model=str(tmp_path / "x.safetensors"), device="cpu")
    with pytest.raises(TypeError, match="defocus_model.*needs a 'defocus' model"):
        nl.deblur(img, method="network", model=net, defocus_model=net, device="cpu")
    hd = HDMENet(width=4, n_branches=2, modules=[1], blocks=1, stem_channels=4, head_channels=8)
    with pytest.warns(UserWarning, match=r"defocus_model is not used by method='network'"):
        nl.deblur(img, method="network", model=net, defocus_model=hd, device="cpu")
    with pytest.warns(UserWarning, match=r"defocus_model is not used when sigma_map is given"):
        nl.deblur(img, method="guided", model=net, defocus_model=hd, sigma_map=np.zeros_like(img), device="cpu")
    for kw, name in ((dict(sigma_r=3.0), "sigma_r"), (dict(sigma_full=3.0), "sigma_full"),
                     (dict(guide="reblur-extrapolate"), "guide")):
        with pytest.warns(UserWarning, match=rf"{name} is not used by method='network'"):
            nl.deblur(img, method="network", model=net, device="cpu", **kw)
    with warnings.catch_warnings():  # the options a method uses, and the defaults: no warning
        warnings.simplefilter("error")
        nl.deblur(img, method="guided", model=net, sigma_map=np.zeros_like(img), sigma_full=3.0, device="cpu")
        nl.deblur(img, method="network", model=net, sigma_r=2.0, device="cpu")
    # the CLI: a missing --defocus-model is an error before anything is written, whatever the method
    import tifffile

    from napari_linblur.cli.main import main

    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, np.random.default_rng(0).poisson(300, (2, 32, 32)).astype(np.uint16))
    model = registry.save_model(net, tmp_path / "net.safetensors",
                                {"architecture": "DRBNet", "task": "deblur", "config": net.config()})
    out = tmp_path / "out.zarr"
    assert main(["deblur", str(tif), str(out), "--method", "network", "--model", str(model), "--defocus-model",
                 str(tmp_path / "x.safetensors"), "--device", "cpu", "--workers", "1"]) == 2
    assert "x.safetensors does not exist" in capsys.readouterr().err and not out.exists()
    # the output records what ran by name: the method 'auto' stands for, its model; sigma_r only where it is used
    import zarr

    assert main(["deblur", str(tif), str(out), "--model", str(model), "--device", "cpu", "--workers", "1"]) == 0
    rec = zarr.open_group(str(out), mode="r").attrs["linblur"]
    assert rec["method"] == "network" and rec["model"] == str(model) and "sigma_r" not in rec
    assert "defocus_model" not in rec


def test_stage2_stacks_with_nan_or_no_content_are_refused_by_name(tmp_path):
    """A NaN pixel in --data surfaced as "loss became nan at step 0; lower --lr" after a checkpoint was written, and
    constant stacks trained without a word; both are now refused when the stacks are read, naming file and plane."""
    from napari_linblur.training.deblur import RealStackPairs

    stack = np.random.default_rng(0).random((6, 48, 48)).astype(np.float32)
    stack[4, 3, 3] = np.nan
    nan = tmp_path / "nan.tif"
    tifffile.imwrite(nan, stack)
    with pytest.raises(ValueError, match=rf"--data {nan}: stack 0, plane 4 has NaN or Inf pixels"):
        RealStackPairs(str(nan), focus_index=2)
    const = tmp_path / "const.tif"
    tifffile.imwrite(const, np.full((6, 48, 48), 7.0, np.float32))
    with pytest.raises(ValueError, match="stack 0 is constant around its in-focus plane"):
        RealStackPairs(str(const))


def test_guided_reblur_has_no_seams_at_its_region_borders():
    """Guided deblurring with guide='reblur-extrapolate' extrapolated each 128-px region on its own crop (32 px of
    context, its own normalization): 6 % of the intensity span at the region borders, where one α everywhere must
    give the whole-plane re-blur + extrapolation. It is now one tiled pass with an α map: the same result."""
    import napari_linblur as nl

    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:200, :260]
    img = (300 + 800 * (np.sin(xx / 5.0) * np.cos(yy / 7.0) > 0.3) + rng.normal(0, 5, (200, 260))).astype(np.float32)
    smap = np.full(img.shape, 4.0, np.float32)
    whole = nl.deblur(img, method="reblur-extrapolate", sigma_map=smap, device="cpu", amp="off")
    guided = nl.deblur(img, method="guided", guide="reblur-extrapolate", sigma_map=smap, sigma_focus=0.0,
                       sigma_full=1.0, device="cpu", amp="off")
    span = float(img.max() - img.min())
    assert np.abs(guided - whole).max() < 1e-3 * span
    # α follows the map: a plane half in focus is left as it is there, and extrapolated where blurred
    half = smap.copy()
    half[:, :130] = 0.0
    part = nl.deblur(img, method="guided", guide="reblur-extrapolate", sigma_map=half, sigma_focus=0.5,
                     sigma_full=1.0, device="cpu", amp="off")
    np.testing.assert_array_equal(part[:, :60], img[:, :60])
    assert np.abs(part[:, 200:] - img[:, 200:]).max() > 0.01 * span
    # a blurred strip narrower than half of the old 128-px regions (their median σ was 0: α 1, nothing done) is
    # deblurred, and the plane is left as it is where the map is in focus
    strip = np.zeros_like(smap)
    strip[:, 40:96] = 4.0
    out = nl.deblur(img, method="guided", guide="reblur-extrapolate", sigma_map=strip, sigma_focus=0.5,
                    sigma_full=1.0, device="cpu", amp="off")
    assert np.abs(out[:, 56:80] - img[:, 56:80]).mean() > 0.01 * span  # the strip is deblurred
    np.testing.assert_array_equal(out[:, 160:], img[:, 160:])
