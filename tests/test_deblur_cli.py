"""CLI of issue 5: linblur train deblur (stage 1 -> stage 2), linblur deblur IN OUT.zarr, linblur evaluate deblur."""

import json

import numpy as np
import pytest
import tifffile
import torch

from napari_linblur.cli.main import main
from napari_linblur.models import registry
from napari_linblur.models.drbnet import DRBNet
from training_helpers import edit_recorded_card

TINY = {"widths": (8, 8, 8), "kernel_size": 3, "blocks": 1}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    net = DRBNet(**TINY)
    with torch.no_grad():
        net.full_head.bias.normal_(0, 0.02)
    path = tmp_path_factory.mktemp("m") / "tiny.safetensors"
    registry.save_model(net, path, {"architecture": "DRBNet", "task": "deblur", "config": net.config()})
    return path


def test_deblur_cli_writes_ome_zarr_same_as_api(tmp_path, tiny_model):
    import napari_linblur as nl
    from napari_linblur.io.readers import open_zstack

    stack = np.random.default_rng(0).poisson(300, (2, 40, 48)).astype(np.uint16)
    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, stack)
    out = tmp_path / "deblurred.zarr"
    assert main(["deblur", str(tif), str(out), "--method", "network", "--model", str(tiny_model),
                 "--device", "cpu", "--workers", "1"]) == 0
    res = open_zstack(out).compute()
    assert res.shape == stack.shape and res.dtype == np.float32
    ref = nl.deblur(stack, method="network", model=str(tiny_model), device="cpu")
    np.testing.assert_allclose(res, ref, rtol=1e-5, atol=1e-2)
    # the self-ensemble option reaches the operation
    out2 = tmp_path / "deblurred_tta.zarr"
    assert main(["deblur", str(tif), str(out2), "--method", "network", "--model", str(tiny_model),
                 "--device", "cpu", "--workers", "1", "--tta", "2"]) == 0
    np.testing.assert_allclose(open_zstack(out2).compute(),
                               nl.deblur(stack, method="network", model=str(tiny_model), device="cpu", tta=2),
                               rtol=1e-5, atol=1e-2)
    # a bad method is an argparse error naming the choices
    with pytest.raises(SystemExit):
        main(["deblur", str(tif), str(tmp_path / "x.zarr"), "--method", "magic"])


def test_train_deblur_two_stages_cli(tmp_path, capsys):
    from napari_linblur.models.autoencoder import LinearLatentAE

    ae = LinearLatentAE(channels=[8, 8], latent_channels=4, blocks=1)
    ae_path = registry.save_model(ae, tmp_path / "ae.safetensors",
                                  {"architecture": "LinearLatentAE", "task": "ae", "config": ae.config})
    common = ["--steps", "3", "--device", "cpu", "--config", "tiny", "--patch", "32", "--batch", "2",
              "--val-every", "3", "--ckpt-every", "3", "--no-progress"]
    assert main(["train", "deblur", "--stage", "1", "--out", str(tmp_path / "s1"), "--loss", "l1", "--pool", "5",
                 "--depth-band", "2.5", "6", "0.5", *common]) == 0
    s1 = tmp_path / "s1" / "model.safetensors"
    card1 = json.loads((tmp_path / "s1" / "model.json").read_text())
    assert card1["loss"]["pixel"] == "l1" and card1["data"]["recipe"]["pool"] == 5
    assert card1["data"]["recipe"]["depth_band"] == [2.5, 6.0, 0.5]
    # no --config in stage 2: the architecture comes from the --init model (tiny here, not "default")
    no_config = [a for a in common if a not in ("--config", "tiny")]
    assert main(["train", "deblur", "--stage", "2", "--init", str(s1), "--feature-ae", str(ae_path),
                 "--out", str(tmp_path / "s2"), *no_config]) == 0
    card = json.loads((tmp_path / "s2" / "model.json").read_text())
    assert card["stage"] == 2 and card["loss"]["feature_weight"] == 5.0 and card["loss"]["pixel"] == "psnr"
    assert card["config"]["widths"] == [8, 8, 8] and card["data"]["recipe"]["depth_band"] == []
    assert card["loss"]["feature_ae"] == str(ae_path) and card["training"]["steps"] == 3
    assert card["loss"]["feature_ae_sha256"] == registry.sha256_file(ae_path)  # the weights by content
    # stage 1 refuses real data (it needs exact correspondence)
    assert main(["train", "deblur", "--stage", "1", "--data", "x.zarr", "--out", str(tmp_path / "bad")]) == 2
    assert "stage 2" in capsys.readouterr().err


#: a tiny stage-2 run on real stacks (no --out, --steps)
_STAGE2 = ["train", "deblur", "--stage", "2", "--config", "tiny", "--patch", "16", "--batch", "2", "--pool", "1",
           "--device", "cpu", "--threads", "1", "--no-progress", "--ckpt-every", "1", "--val-every", "1"]


def _stack_tif(path, side=40):
    """A 5-plane through-focus TIFF stack of ``side x side`` px (sharpest plane in the middle)."""
    from scipy import ndimage as ndi

    sharp = ndi.gaussian_filter(np.random.default_rng(0).random((side, side)), 0.7) * 1000
    tifffile.imwrite(path, np.stack([ndi.gaussian_filter(sharp, s) for s in (3.0, 1.5, 0.0, 1.5, 3.0)])
                     .astype(np.float32))
    return path


def test_train_deblur_records_real_fraction_and_resume_keeps_it(tmp_path, capsys):
    """--real-fraction is in the card (with the real stacks' path), so a --resume with another value is refused,
    naming it, like every other recipe option; the same value resumes."""
    tif = _stack_tif(tmp_path / "stack.tif")
    out = tmp_path / "run"
    run = [*_STAGE2, "--feature-weight", "0", "--data", str(tif), "--out", str(out)]
    assert main([*run, "--real-fraction", "0.75", "--steps", "1"]) == 0
    card = registry.read_card(out / "model.safetensors")
    assert card["data"]["real_fraction"] == 0.75 and card["data"]["real_data"] == str(tif)
    assert main([*run, "--real-fraction", "0.25", "--steps", "2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "data.real_fraction 0.75 -> 0.25" in err and "start a new --out" in err
    assert main([*run, "--real-fraction", "0.75", "--steps", "2", "--resume"]) == 0
    assert registry.read_card(out / "model.safetensors")["training"]["steps"] == 2


def test_train_deblur_resume_with_a_relative_feature_ae_from_another_folder(tmp_path, monkeypatch, capsys):
    """A --feature-ae file is recorded as its absolute path (a shipped name stays a name): a --resume from another
    folder, or with another spelling of the same file, continues the run; other weights are refused. A run that
    recorded the path as typed (before paths were made absolute) resumes with the same weights too."""
    import shutil

    from napari_linblur.models.autoencoder import LinearLatentAE

    torch.manual_seed(0)
    ae = LinearLatentAE(channels=[8, 8], latent_channels=4, blocks=1)
    registry.save_model(ae, tmp_path / "ae.safetensors",
                        {"architecture": "LinearLatentAE", "task": "ae", "config": ae.config})
    (tmp_path / "elsewhere").mkdir()
    out = tmp_path / "run"
    run = [*_STAGE2, "--feature-weight", "0.5", "--out", str(out)]
    monkeypatch.chdir(tmp_path)
    assert main([*run, "--feature-ae", "ae.safetensors", "--steps", "1"]) == 0
    card = registry.read_card(out / "model.safetensors")
    assert card["loss"]["feature_ae"] == str(tmp_path / "ae.safetensors")
    assert main([*run, "--feature-ae", "./ae.safetensors", "--steps", "2", "--resume"]) == 0
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main([*run, "--feature-ae", "../ae.safetensors", "--steps", "3", "--resume"]) == 0
    card = registry.read_card(out / "model.safetensors")
    assert card["training"]["steps"] == 3 and card["loss"]["feature_ae"] == str(tmp_path / "ae.safetensors")
    # the same weights under another name are the same feature space (checked by sha256): the card names the file
    # this session read
    shutil.copy(tmp_path / "ae.safetensors", tmp_path / "elsewhere" / "copy.safetensors")
    assert main([*run, "--feature-ae", "copy.safetensors", "--steps", "4", "--resume"]) == 0
    card = registry.read_card(out / "model.safetensors")
    assert card["loss"]["feature_ae"] == str(tmp_path / "elsewhere" / "copy.safetensors")
    assert card["loss"]["feature_ae_sha256"] == registry.sha256_file(tmp_path / "ae.safetensors")
    # a run that recorded the relative spelling (before this version) resumes from another folder
    edit_recorded_card(out / "checkpoint.safetensors", lambda c: c["loss"].update(feature_ae="ae.safetensors"))
    assert main([*run, "--feature-ae", str(tmp_path / "ae.safetensors"), "--steps", "5", "--resume"]) == 0
    assert registry.read_card(out / "model.safetensors")["loss"]["feature_ae"] == str(tmp_path / "ae.safetensors")
    # other weights are another run: refused, naming them
    torch.manual_seed(1)
    other = LinearLatentAE(channels=[8, 8], latent_channels=4, blocks=1)
    registry.save_model(other, tmp_path / "other.safetensors",
                        {"architecture": "LinearLatentAE", "task": "ae", "config": other.config})
    assert main([*run, "--feature-ae", "../other.safetensors", "--steps", "6", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "loss.feature_ae_sha256" in err and registry.sha256_file(tmp_path / "other.safetensors") in err


@pytest.mark.parametrize("side", [24, 12])
def test_train_deblur_refuses_a_patch_larger_than_the_real_planes(tmp_path, capsys, side):
    """--data planes smaller than --patch: a ValueError naming --patch, the plane size and the patch that fits,
    before any file is written (it was numpy's 'high <= 0' from the first batch)."""
    from napari_linblur.training.deblur import DeblurData, DeblurTask

    tif = _stack_tif(tmp_path / "small.tif", side=side)
    out = tmp_path / "run"
    assert main([*_STAGE2, "--patch", "32", "--feature-weight", "0", "--data", str(tif), "--out", str(out),
                 "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert f"has planes of {side} x {side} px, smaller than the --patch 32 px training patch" in err
    assert ("give --patch 24 or less" if side == 24 else "train on larger images") in err and not out.exists()
    with pytest.raises(ValueError, match="--patch"):
        DeblurTask(stage=2, config="tiny", data=DeblurData(patch=32, batch=2, pool=1), real_data=str(tif),
                   val_size=1)


def test_evaluate_deblur_cli(tmp_path, tiny_model):
    out = tmp_path / "ev"
    assert main(["evaluate", "deblur", "--model", str(tiny_model), "--ablation", f"copy={tiny_model}", "--n", "1",
                 "--side", "64", "--depths", "2", "8", "--no-reblur", "--speed-side", "64", "--tta", "2",
                 "--out", str(out)]) == 0
    res = json.loads((out / "deblur_eval.json").read_text())
    assert set(res["focus"]) == {"2", "8"}
    assert "network x2" in res["focus"]["2"] and "network x2" in res["varying"]
    row = res["focus"]["8"]
    assert row["network"] == row["copy"]  # the same model twice scores the same
    # the true-PSF baselines beat the blurry input at 8 µm
    assert max(row["wiener (true PSF)"], row["richardson-lucy (true PSF)"]) > row["input"]
    assert {"focus_gain_db_per_depth", "varying_gain_db"} <= set(res["bars"])
    assert res["speed"]["side"] == 64 and res["speed"]["network_s"] > 0
    md = (out / "deblur_eval.md").read_text()
    assert "Through-focus planes" in md
    # SSIM: a parallel mapping with the same test sets and methods as the PSNR rows, values in [-1, 1]
    sim = res["ssim"]
    assert set(sim) == {"focus", "varying", "captured"} and set(sim["focus"]) == {"2", "8"}
    for d, r in res["focus"].items():
        assert set(sim["focus"][d]) == set(r) - {"rl_best_iter"}
    assert set(sim["varying"]) == set(res["varying"]) and set(sim["captured"]) == set(res["captured"])
    values = [v for r in [*sim["focus"].values(), sim["varying"], sim["captured"]] for v in r.values()]
    assert values and all(-1.0 <= v <= 1.0 for v in values)
    assert sim["focus"]["8"]["network"] == sim["focus"]["8"]["copy"]
    assert {"input", "wiener (true PSF)", "richardson-lucy (true PSF)", "network", "network x2"} <= set(sim["varying"])
    assert "### SSIM" in md and f"| 8 µm | {sim['focus']['8']['input']:.4f} |" in md
    # the recorded command is the exact one: parsing it again gives the same options
    import shlex

    from napari_linblur.cli.main import build_parser

    again = build_parser().parse_args(shlex.split(res["command"])[1:])
    assert again.ablation == [f"copy={tiny_model}"] and again.depths == [2.0, 8.0] and again.no_reblur
    assert not again.no_speed and again.speed_side == 64 and again.tta == 2 and again.n == 1


def test_evaluate_deblur_ssim_scores_the_reported_outputs(monkeypatch, tiny_model):
    """SSIM of the input, of the PSNR-chosen Wiener / RL outputs, and 1 for a perfect reconstruction."""
    import napari_linblur.inference.deblur_ops as ops
    import napari_linblur.training.deblur as training
    from napari_linblur.baselines.richardson_lucy import best_richardson_lucy
    from napari_linblur.baselines.wiener import best_wiener
    from napari_linblur.evaluation.deblur import evaluate_deblur, to_markdown
    from napari_linblur.metrics.image import ssim

    items: dict[str, list[dict]] = {}
    real = training.make_test_set

    def recording(kind, n, **kwargs):
        got = real(kind, n, **kwargs)
        items.setdefault(kind, []).extend(got)
        return got

    def oracle(img, **kwargs):  # every "network" returns the exact sharp image of its input
        for it in (i for v in items.values() for i in v):
            if it["blurry"].shape == img.shape and np.array_equal(it["blurry"], img):
                return it["sharp"].copy()
        raise AssertionError("deblur called on an image that is not a test input")

    monkeypatch.setattr(training, "make_test_set", recording)
    monkeypatch.setattr(ops, "deblur", oracle)
    res = evaluate_deblur({"network": str(tiny_model)}, n=1, side=32, depths=(4.0,), rl_max_iter=5, reblur=False,
                          speed=False)
    sim = res["ssim"]
    (f,), (v,), (c,) = items["focus"], items["varying"], items["captured"]
    for it, row in ((f, sim["focus"]["4"]), (v, sim["varying"]), (c, sim["captured"])):
        s, b = it["sharp"], it["blurry"]
        assert row["input"] == pytest.approx(ssim(s, b, data_range=float(s.max())), abs=1e-4)
        assert row["input"] < 1.0
        assert row["network"] == row.get("network fp32", 1.0) == 1.0  # a perfect reconstruction
    assert sim["varying"]["guided (true map)"] == 1.0
    # the baselines' SSIM is that of the very output whose PSNR is reported (the balance / iteration chosen by PSNR)
    s, b, psf = f["sharp"], f["blurry"], f["psf"]
    w = best_wiener(b, psf, s)
    rl = best_richardson_lucy(b, psf, s, max_iter=5)
    row = res["focus"]["4"]
    assert row["wiener (true PSF)"] == pytest.approx(w[2], abs=1e-3)
    assert row["richardson-lucy (true PSF)"] == pytest.approx(rl[2], abs=1e-3)
    assert sim["focus"]["4"]["wiener (true PSF)"] == pytest.approx(ssim(s, w[0], data_range=float(s.max())), abs=1e-4)
    assert sim["focus"]["4"]["richardson-lucy (true PSF)"] == pytest.approx(
        ssim(s, rl[0], data_range=float(s.max())), abs=1e-4)
    assert all(-1.0 <= x <= 1.0 for r in [*sim["focus"].values(), sim["varying"], sim["captured"]] for x in r.values())
    md = to_markdown(res)
    assert "### SSIM" in md and f"{sim['focus']['4']['wiener (true PSF)']:.4f}" in md
    # results written before SSIM was reported still render (PSNR tables only)
    old = {k: x for k, x in res.items() if k != "ssim"}
    assert "Through-focus planes" in to_markdown(old) and "SSIM" not in to_markdown(old)


@pytest.mark.parametrize("bad, says", [
    (["--init", "ae-default"], "is a LinearLatentAE (ae) model, not a DRBNet"),
    (["--stage", "2", "--init", "deblur-default", "--data", "x.zarr", "--real-fraction", "2"], "--real-fraction"),
    (["--pool", "0"], "--pool must be >= 1"),
    (["--stage", "2", "--init", "deblur-default", "--data", "OUT"], "refusing to write into its own input"),
])
def test_train_deblur_refuses_impossible_options_before_any_work(tmp_path, capsys, bad, says):
    out = tmp_path / "run"
    bad = [str(out.parent) if b == "OUT" else b for b in bad]  # --data holding --out: the run would write into it
    assert main(["train", "deblur", "--steps", "1", "--out", str(out), "--device", "cpu", *bad]) == 2
    assert says in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("depths, error", [([float("nan")], ValueError), ([], ValueError), ([1.0, "far"], TypeError),
                                           (3.0, TypeError)])
def test_evaluate_deblur_checks_depths_before_any_work(depths, error):
    from napari_linblur.evaluation.deblur import evaluate_deblur

    with pytest.raises(error, match=r"depths must be .*defocus distances in µm"):
        evaluate_deblur({"missing": "/no/such/model.safetensors"}, depths=depths)  # refused before the model loads
