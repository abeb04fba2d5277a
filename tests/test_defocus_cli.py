"""Training task + CLI: linblur train defocus / defocus-map / focus / evaluate defocus (tiny configs)."""

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from defocus_helpers import TINY, save_tiny_model
from defocus_helpers import tiny_data as _data
from napari_linblur.cli.main import main
from napari_linblur.models import registry
from napari_linblur.models.hrnet import HDMENet
from napari_linblur.training.defocus import (
    DefocusDataConfig,
    DefocusTask,
    make_sample,
    render_sample,
)
from training_helpers import edit_recorded_card


def test_batches_deterministic_in_seed_and_step():
    a = DefocusTask(TINY, _data(), seed=5)
    b = DefocusTask(TINY, _data(), seed=5)
    xa, sa = a.batch(3)
    xb, sb = b.batch(3)
    assert torch.equal(xa, xb) and torch.equal(sa, sb)
    xc, _ = a.batch(4)
    assert not torch.equal(xa, xc)
    assert float(sa.min()) >= 0 and float(sa.max()) <= 10
    # on-the-fly rendering (no pool) is deterministic too
    c1, c2 = DefocusTask(TINY, _data(pool_size=0), seed=1), DefocusTask(TINY, _data(pool_size=0), seed=1)
    assert torch.equal(c1.batch(0)[0], c2.batch(0)[0])


def test_plane_normalization_matches_inference_and_crop_mode_stretches():
    """normalize="plane": a dim crop of a bright plane stays dim (as when estimate_defocus normalizes the plane);
    normalize="crop": the same crop is stretched to the full range on its own."""
    from napari_linblur.training.defocus import make_sample

    blurred = np.zeros((64, 64), np.float32)
    blurred[:, :32] = 1.0  # bright half; the crop below sees only the dark half
    sigma = np.full((64, 64), 2.0, np.float32)
    cfg_plane = _data(crop=24, render_size=64, normalize="plane")
    cfg_crop = _data(crop=24, render_size=64, normalize="crop")
    # pick seeds whose crop lies entirely in the dark half (x0 >= 32 of 0..40)
    seeds = [sd for sd in range(200) if int(np.random.default_rng(sd).integers(0, 41, 2)[1]) >= 32][:3]
    assert seeds
    for sd in seeds:
        xp, sp = make_sample(blurred, sigma, np.random.default_rng(sd), cfg_plane)
        xc, _ = make_sample(blurred, sigma, np.random.default_rng(sd), cfg_crop)
        assert xp.shape == xc.shape == (24, 24) and xp.dtype == np.float32
        assert np.all(sp == 2.0)
        assert float(np.median(xp)) < 0.2  # dim, as in the normalized plane
        assert float(xc.max() - xc.min()) > 0.8  # stretched noise
    with pytest.raises(ValueError, match="normalize"):
        _data(normalize="tile").validate()


@pytest.mark.parametrize("content", ["shuffle", "phantom"])
def test_samples_are_rendered_with_the_true_varying_psf(content):
    cfg = _data(content=content)
    blurred, sig, kind = render_sample([0, 1], cfg)
    assert kind == content and blurred.shape == sig.shape == (32, 32)
    assert 0 <= sig.min() and sig.max() <= 10
    x, s = make_sample(blurred, sig, np.random.default_rng(0), cfg)
    assert x.shape == s.shape == (16, 16) and x.dtype == np.float32
    # normalized like inference: robust percentiles map to ~[0, 1]
    assert -0.5 < np.percentile(x, 50) < 1.5


def test_low_contrast_shuffled_content_and_unchanged_default():
    from napari_linblur.training.defocus import sharp_content

    def contrast(img):
        return float(img.std() / img.mean())

    plain = [sharp_content(48, "shuffle", np.random.default_rng(i))[0] for i in range(12)]
    low = [sharp_content(48, "shuffle", np.random.default_rng(i), low_contrast=1.0)[0] for i in range(12)]
    # scaled down 2-33x around the mean (then normalized to max 1)
    assert all(contrast(b) < 0.55 * contrast(a) for a, b in zip(plain, low))
    assert all(0 <= b.min() and b.max() == pytest.approx(1.0) for b in low)
    # default 0: no extra draw, so the recipes before the option replay exactly
    again = [sharp_content(48, "shuffle", np.random.default_rng(i), low_contrast=0.0)[0] for i in range(12)]
    assert all(np.array_equal(a, b) for a, b in zip(plain, again))
    b0, s0, _ = render_sample([0, 1], _data(content="shuffle"))
    b1, s1, _ = render_sample([0, 1], _data(content="shuffle", low_contrast=0.0))
    assert np.array_equal(b0, b1) and np.array_equal(s0, s1)
    # phantoms are never touched
    ph = sharp_content(48, "phantom", np.random.default_rng(3), low_contrast=1.0)[0]
    assert np.array_equal(ph, sharp_content(48, "phantom", np.random.default_rng(3))[0])
    with pytest.raises(ValueError, match="low_contrast"):
        _data(low_contrast=1.5).validate()


def test_task_loss_validate_card():
    t = DefocusTask(TINY, _data(), seed=0, config_name="tiny")
    net = t.build_model()
    loss, parts = t.loss(net, t.batch(0))
    assert loss.ndim == 0 and "mae_px" in parts
    v = t.validate(net.eval())
    assert {"val_loss", "val_mae_px", "val_rmse_px"} <= set(v)
    card = t.card()
    assert card["architecture"] == "HDMENet" and card["task"] == "defocus"
    assert card["data"]["recipe"]["content"] == "mixed" and card["data"]["seed"] == 0
    HDMENet(**card["config"])


def test_batchnorm_recalibration_matches_final_weights():
    from napari_linblur.training.defocus import recalibrate_batchnorm

    t = DefocusTask(dict(TINY, norm="batch"), _data(), seed=0)
    net = t.build_model()
    assert recalibrate_batchnorm(net, t, 3) > 0
    bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 3
    assert recalibrate_batchnorm(HDMENet(**TINY), t, 2) == 0  # no BatchNorm: nothing to do


def test_ctrl_c_during_cli_training_keeps_the_step_reached(tmp_path, capsys):
    """Ctrl-C while `linblur train` runs: exit code 130, a message naming the step and --resume, and a checkpoint of
    that step although the periodic one is far away; SIGTERM (a cluster's time limit) exits with 143."""
    import os
    import signal
    import threading

    from safetensors import safe_open

    for signame, code in (("SIGINT", 130), ("SIGTERM", 143)):
        out = tmp_path / signame
        args = ["train", "defocus", "--content", "shuffle", "--out", str(out), "--steps", "100000", "--width", "4",
                "--crop", "16", "--render-size", "32", "--batch-size", "2", "--pool-size", "2", "--device", "cpu",
                "--no-progress", "--val-every", "100000", "--ckpt-every", "100000", "--threads", "1"]

        def send(signum=getattr(signal, signame), log=out / "log.jsonl"):
            for _ in range(600):  # once the run is stepping (its first log line), up to 60 s
                if log.exists() and log.stat().st_size:
                    break
                threading.Event().wait(0.1)
            os.kill(os.getpid(), signum)

        threading.Thread(target=send, daemon=True).start()
        assert main(args) == code
        err = capsys.readouterr().err
        assert f"interrupted by {signame} at step" in err and "--resume" in err
        with safe_open(str(out / "checkpoint.safetensors"), framework="pt") as f:
            step = int(f.metadata()["step"])
        assert 10 <= step < 100000
        assert registry.load_model(out / "model.safetensors", device="cpu").card["training"]["steps"] == step


def test_config_with_init_and_report_folders_are_checked_up_front(tmp_path, tiny_model, capsys):
    """--config cannot contradict the --init model's architecture (the card would say 'paper' over a small net);
    an evaluation's --out that is a file is refused before the evaluation runs."""
    out = tmp_path / "run"
    assert main(["train", "defocus", "--init", str(tiny_model), "--config", "paper", "--out", str(out),
                 "--steps", "1"]) == 2
    assert "cannot be combined with --init" in capsys.readouterr().err and not out.exists()
    (tmp_path / "afile").write_text("")
    assert main(["evaluate", "defocus", "--out", str(tmp_path / "afile"), "--n-images", "1"]) == 2
    assert "a file is in the way" in capsys.readouterr().err


def test_train_cli_and_resume(tmp_path):
    out = tmp_path / "run"
    args = ["train", "defocus", "--content", "shuffle", "--out", str(out), "--steps", "3", "--width", "4",
            "--crop", "16", "--render-size", "32", "--batch-size", "2", "--pool-size", "2", "--device", "cpu",
            "--no-progress", "--val-every", "3", "--ckpt-every", "3", "--threads", "1"]
    assert main(args) == 0
    m = registry.load_model(out / "model.safetensors", device="cpu")
    assert m.task == "defocus" and m.card["data"]["recipe"]["content"] == "shuffle"
    assert m.card["training"]["steps"] == 3 and list(m.card["data"]["recipe"]["sigma_range"]) == [0.0, 10.0]
    args[args.index("--steps") + 1] = "5"
    assert main(args + ["--resume"]) == 0
    assert registry.load_model(out / "model.safetensors", device="cpu").card["training"]["steps"] == 5
    assert main(["train", "defocus", "--out", str(tmp_path / "bad"), "--crop", "20", "--steps", "1"]) == 2
    # --sigma-max widens the training maps' range and is recorded; a non-positive one is a clear error
    out12 = tmp_path / "s12"
    args12 = [a if a != str(out) else str(out12) for a in args] + ["--sigma-max", "12"]
    assert main(args12) == 0
    card = registry.load_model(out12 / "model.safetensors", device="cpu").card
    assert list(card["data"]["recipe"]["sigma_range"]) == [0.0, 12.0]
    assert card["output"].endswith("trained on [0, 12]")
    assert main([*args12[:-2], "--out", str(tmp_path / "bad2"), "--sigma-max", "0"]) == 2
    # --low-contrast P is recorded in the recipe
    outlc = tmp_path / "lc"
    assert main([*args12[:-2], "--out", str(outlc), "--low-contrast", "0.3"]) == 0
    assert registry.load_model(outlc / "model.safetensors", device="cpu").card["data"]["recipe"]["low_contrast"] == 0.3
    # --full-range P is recorded in the recipe
    outfr = tmp_path / "fr"
    assert main([*args12[:-2], "--out", str(outfr), "--full-range", "0.75"]) == 0
    assert registry.load_model(outfr / "model.safetensors", device="cpu").card["data"]["recipe"]["full_range"] == 0.75
    # --photons LOW HIGH widens the training images' brightness range and is recorded; a bad range is a clear error
    outph = tmp_path / "ph"
    assert main([*args12[:-2], "--out", str(outph), "--photons", "200", "50000"]) == 0
    card = registry.load_model(outph / "model.safetensors", device="cpu").card
    assert list(card["data"]["recipe"]["photons"]) == [200.0, 50000.0]
    for bad in (["0", "100"], ["5000", "100"], ["-1", "-1"]):
        assert main([*args12[:-2], "--out", str(tmp_path / "badph"), "--photons", *bad]) == 2
    assert not (tmp_path / "badph").exists()


def test_card_output_names_the_trained_sigma_range(tmp_path, capsys):
    """The card's ``output`` names the σ range of the recipe (--sigma-max), not always [0, 10]; a run recorded
    before it did (its card said [0, 10] whatever the range) still resumes."""
    assert DefocusTask(TINY, _data()).card()["output"].endswith("trained on [0, 10]")  # the shipped model's words
    assert DefocusTask(TINY, _data(sigma_range=(0.5, 12.0))).card()["output"].endswith("trained on [0.5, 12]")
    out = tmp_path / "run"
    args = ["train", "defocus", *_TINY_RUN, "--width", "4", "--sigma-max", "12", "--out", str(out)]
    assert main([*args, "--steps", "1"]) == 0
    card = registry.read_card(out / "model.safetensors")
    assert card["output"] == "sigma (px) of the equivalent Gaussian PSF per pixel, trained on [0, 12]"
    edit_recorded_card(out / "checkpoint.safetensors", lambda c: c.update(output=c["output"].replace("12", "10")))
    assert main([*args, "--steps", "2", "--resume"]) == 0
    assert registry.read_card(out / "model.safetensors")["output"].endswith("trained on [0, 12]")
    # the σ range itself is still part of the run
    assert main(["train", "defocus", *_TINY_RUN, "--width", "4", "--sigma-max", "11", "--out", str(out),
                 "--steps", "3", "--resume"]) == 2
    assert "data.recipe.sigma_range [0.0, 12.0] -> [0.0, 11.0]" in capsys.readouterr().err


def test_full_range_maps_and_unchanged_default():
    """full_range=1: every map spans the whole σ range; 0 (default): no extra draw, the old maps replay exactly."""
    from napari_linblur.training.defocus import random_defocus_map

    for i in range(6):
        full = random_defocus_map(64, np.random.default_rng(i), (0.0, 10.0), full_range=1.0)
        assert 0 <= full.min() and full.max() <= 10 and np.ptp(full) > 3  # region maps need not reach both ends
        np.testing.assert_array_equal(random_defocus_map(64, np.random.default_rng(i), (0.0, 10.0)),
                                      random_defocus_map(64, np.random.default_rng(i), (0.0, 10.0), full_range=0.0))
    # sub-ranges put less weight on the ends of the range than full-range maps
    ends = []
    for p in (0.0, 1.0):
        maps = np.stack([random_defocus_map(64, np.random.default_rng(i), (0.0, 10.0), full_range=p)
                         for i in range(60)])
        ends.append(float(np.mean((maps < 1) | (maps > 9))))
    assert ends[1] > 1.5 * ends[0]
    b0, s0, _ = render_sample([0, 1], _data())
    b1, s1, _ = render_sample([0, 1], _data(full_range=0.0))
    assert np.array_equal(b0, b1) and np.array_equal(s0, s1)
    with pytest.raises(ValueError, match="full_range"):
        _data(full_range=-0.1).validate()


def test_train_cli_init_continues_from_saved_weights(tmp_path, tiny_model):
    """--init starts from a saved model's weights (architecture from its card) and records where they came from."""
    from napari_linblur.training.defocus import DefocusTask

    src = registry.load_model(tiny_model, device="cpu")
    task = DefocusTask(dict(src.card["config"]), DefocusDataConfig(), init=str(tiny_model))
    started = task.build_model().state_dict()
    for k, v in src.state_dict().items():
        torch.testing.assert_close(started[k], v, rtol=0, atol=0)
    out = tmp_path / "cont"
    args = ["train", "defocus", "--content", "shuffle", "--out", str(out), "--steps", "2", "--init", str(tiny_model),
            "--crop", "16", "--render-size", "32", "--batch-size", "2", "--pool-size", "2", "--device", "cpu",
            "--no-progress", "--threads", "1", "--bn-batches", "0"]
    assert main(args) == 0
    card = registry.load_model(out / "model.safetensors", device="cpu").card
    assert card["config"] == src.card["config"]
    assert card["init"]["from"] == str(tiny_model) and card["init"]["sha256"] == registry.sha256_file(tiny_model)
    # an init model of another architecture, or --width with --init, is refused with a clear error
    assert main([*args[:4], "--out", str(tmp_path / "bad"), "--steps", "1", "--init", "deblur-default"]) == 2
    assert main([*args, "--width", "8"]) == 2
    assert not (tmp_path / "bad" / "model.safetensors").exists()


def test_a_fine_tune_of_the_shipped_model_records_the_whole_training_time(tmp_path):
    """The shipped card records its five legs as a minutes total: a fine-tune's card adds its own seconds to it."""
    out = tmp_path / "ft"
    assert main(["train", "defocus", "--init", "defocus-default", "--noise-input", "map", "--content", "shuffle",
                 "--out", str(out),
                 "--steps", "1", "--crop", "16", "--render-size", "32", "--batch-size", "2", "--pool-size", "2",
                 "--device", "cpu", "--no-progress", "--threads", "1", "--bn-batches", "0"]) == 0
    card = registry.read_card(out / "model.safetensors")
    shipped = registry.read_card("defocus-default")["training_minutes_total"] * 60.0
    assert card["init"]["total"] == {"seconds": round(shipped, 1), "steps": None, "legs": None}
    assert card["training_total"]["seconds"] == pytest.approx(round(shipped, 1) + card["training"]["seconds"])
    assert card["training_total"]["legs"] is None  # the shipped chain did not record its legs' count
    # the command with every default spelled out: re-running it cannot pick up a later change of a default
    import shlex

    from napari_linblur.cli.main import build_parser

    eff = card["training"]["command_effective"]
    assert "--lr" in eff and "--sigma-max" in eff and "--photons" in eff
    again = build_parser().parse_args(shlex.split(eff)[1:])
    assert again.init == "defocus-default" and again.steps == 1 and again.noise_input == "map"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("m"))




def test_defocus_map_and_focus_cli(tmp_path, tiny_model, scheduler, capsys):
    from napari_linblur.io.readers import open_zstack

    rng = np.random.default_rng(0)
    stack = rng.poisson(200, (3, 40, 48)).astype(np.uint16)
    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, stack)
    out = tmp_path / "sigma.zarr"
    assert main(["defocus-map", str(tif), str(out), "--model", str(tiny_model), "--device", "cpu",
                 "--workers", "1", "--tile", "32"]) == 0
    res = open_zstack(out)
    assert res.shape == open_zstack(tif).shape and res.size == stack.size and res.dtype == np.float32
    assert np.isfinite(res.compute()).all()
    # the self-ensemble option reaches the operation
    out2 = tmp_path / "sigma_tta.zarr"
    assert main(["defocus-map", str(tif), str(out2), "--model", str(tiny_model), "--device", "cpu",
                 "--workers", "1", "--tile", "32", "--tta", "2"]) == 0
    from napari_linblur.inference.defocus_ops import estimate_defocus

    np.testing.assert_allclose(open_zstack(out2).compute().reshape(stack.shape), estimate_defocus(
        stack, model=str(tiny_model), device="cpu", tile=32, tta=2), rtol=1e-5, atol=1e-5)
    import zarr

    assert zarr.open_group(str(out2), mode="r").attrs["linblur"]["tta"] == 2
    js, cs = tmp_path / "f.json", tmp_path / "f.csv"
    stack2 = np.stack([rng.poisson(200, (40, 48)), rng.poisson(2000, (40, 48)), rng.poisson(200, (40, 48))])
    tifffile.imwrite(tif, stack2.astype(np.uint16), imagej=True, metadata={"axes": "ZYX"})
    assert main(["focus", str(tif), "--method", "brenner", "--scheduler", scheduler, "--json", str(js),
                 "--csv", str(cs)]) == 0
    data = json.loads(js.read_text())
    (only,) = data["stacks"].values()
    assert only["best_plane"] == 1 and len(only["scores"]) == 3
    assert cs.read_text().count("\n") == 4
    assert main(["focus", str(tif), "--model", str(tiny_model), "--device", "cpu", "--scheduler", scheduler]) == 0
    assert "best plane" in capsys.readouterr().out


def test_focus_cli_channel_index_and_report_safety(tmp_path, scheduler, capsys):
    """--channel takes an index or a name in every batch command; --json/--csv never overwrite the input, are
    checked before any work, and are written atomically as strict JSON / CSV."""
    import hashlib

    from napari_linblur.io.omezarr import write_ome_zarr

    rng = np.random.default_rng(3)
    sharp = rng.poisson(2000, (40, 48)).astype(np.uint16)
    flat = rng.poisson(200, (40, 48)).astype(np.uint16)
    # channel DAPI: plane 1 sharp; channel GFP: plane 0 sharp
    data = np.stack([np.stack([flat, sharp, flat]), np.stack([sharp, flat, flat])])
    src = write_ome_zarr(tmp_path / "czyx.zarr", data, axes="czyx", channel_names=["DAPI", "GFP"])
    best = {}
    for ch in ("0", "1", "DAPI", "gfp", "-1"):
        js = tmp_path / f"focus_{ch}.json"
        assert main(["focus", str(src), "--channel", ch, "--method", "brenner", "--scheduler", scheduler,
                     "--json", str(js)]) == 0, ch
        (only,) = json.loads(js.read_text())["stacks"].values()
        best[ch] = only["best_plane"]
    assert best == {"0": 1, "1": 0, "DAPI": 1, "gfp": 0, "-1": 0}
    assert main(["focus", str(src), "--channel", "2", "--method", "brenner", "--scheduler", scheduler]) == 2
    assert "indices 0..1" in capsys.readouterr().err

    tif = tmp_path / "victim.tif"
    tifffile.imwrite(tif, data[0])
    before = hashlib.sha256(tif.read_bytes()).hexdigest()
    (tmp_path / "adir").mkdir()
    for argv, says in (
        (["--csv", str(tif)], "would overwrite the input"),
        (["--json", str(tmp_path / "adir")], "is a folder"),
        (["--json", str(tmp_path / "missing" / "f.json")], "folder does not exist"),
        (["--json", str(tmp_path / "same"), "--csv", str(tmp_path / "same")], "name the same file"),
    ):
        assert main(["focus", str(tif), "--method", "brenner", "--scheduler", scheduler, *argv]) == 2, says
        assert says in capsys.readouterr().err
    assert hashlib.sha256(tif.read_bytes()).hexdigest() == before
    assert not (tmp_path / "same").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary file left behind


def test_defocus_map_cli_in_micrometres(tmp_path, tiny_model, scheduler, capsys):
    import zarr

    from napari_linblur.inference.defocus_ops import estimate_defocus, sigma_to_defocus_um
    from napari_linblur.io.omezarr import write_ome_zarr
    from napari_linblur.io.readers import open_zstack
    from napari_linblur.optics.psf import OpticalSetup

    stack = np.random.default_rng(1).poisson(300, (2, 40, 48)).astype(np.uint16)
    src = write_ome_zarr(tmp_path / "in.zarr", stack, axes="zyx", scale=(2.0, 0.65, 0.65))
    out = tmp_path / "um.zarr"
    base = ["defocus-map", str(src), str(out), "--model", str(tiny_model), "--device", "cpu", "--tile", "32",
            "--scheduler", scheduler]
    # the pixel size comes from the input's metadata (0.65 µm)
    assert main([*base, "--um", "--na", "0.45", "--wavelength", "0.52"]) == 0
    setup = OpticalSetup(na=0.45, wavelength_um=0.52, pixel_um=0.65)
    expect = sigma_to_defocus_um(estimate_defocus(stack, model=str(tiny_model), device="cpu", tile=32), setup=setup)
    got = open_zstack(out).compute().reshape(stack.shape)
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-4)
    attrs = zarr.open_group(str(out), mode="r").attrs["linblur"]
    assert attrs["unit"].startswith("micrometer") and attrs["optics"]["pixel_um"] == 0.65
    assert attrs["optics"]["na"] == 0.45 and attrs["optics"]["model"] == "born_wolf"
    # --pixel-um overrides it: the same σ in px is more µm of defocus with larger pixels
    out2 = tmp_path / "um2.zarr"
    with pytest.warns(UserWarning, match=r"--pixel-um 1.3 differs from the pixel size .* records \(0.65 x 0.65 µm\)"):
        assert main([*base[:2], str(out2), *base[3:], "--um", "--na", "0.45", "--wavelength", "0.52",
                     "--pixel-um", "1.3"]) == 0
    got2 = open_zstack(out2).compute().reshape(stack.shape)
    np.testing.assert_allclose(got2, sigma_to_defocus_um(estimate_defocus(
        stack, model=str(tiny_model), device="cpu", tile=32), setup=setup.replace(pixel_um=1.3)), rtol=1e-5, atol=1e-4)
    assert (got > 0).all() and (got2 > got).all()
    # an input without a pixel size: the output records --pixel-um on y and x (napari shows it in µm)
    plain = tmp_path / "plain_in.tif"
    tifffile.imwrite(plain, stack)
    out3 = tmp_path / "um3.zarr"
    assert main(["defocus-map", str(plain), str(out3), *base[3:], "--um", "--na", "0.45", "--wavelength", "0.52",
                 "--pixel-um", "0.325"]) == 0
    from napari_linblur.io.readers import open_zstack_with_metadata

    meta3 = open_zstack_with_metadata(out3)[1]
    assert meta3.scale[-2:] == (0.325, 0.325) and meta3.units[-2:] == ("micrometer", "micrometer")
    assert meta3.units[meta3.axes.index("z")] is None  # Z stays as uncalibrated as the input's
    capsys.readouterr()

    # bad or incomplete optics: exit 2 with the reason, nothing written
    tif = tmp_path / "plain.tif"
    tifffile.imwrite(tif, stack)
    bad = {"no pixel size": ["defocus-map", str(tif), str(tmp_path / "b1.zarr"), "--um", "--na", "0.45",
                             "--wavelength", "0.52"],
           "no --um": [*base[:2], str(tmp_path / "b2.zarr"), *base[3:], "--na", "0.45"],
           "no wavelength": [*base[:2], str(tmp_path / "b3.zarr"), *base[3:], "--um", "--na", "0.45"],
           "na >= ni": [*base[:2], str(tmp_path / "b4.zarr"), *base[3:], "--um", "--na", "1.2", "--wavelength",
                        "0.52"],
           # values in nm converted every sigma below the in-focus one of a 520-µm wavelength to 0 µm, silently
           "wavelength in nm": [*base[:2], str(tmp_path / "b5.zarr"), *base[3:], "--um", "--na", "0.45",
                                "--wavelength", "520"],
           "pixel in nm": [*base[:2], str(tmp_path / "b6.zarr"), *base[3:], "--um", "--na", "0.45",
                           "--wavelength", "0.52", "--pixel-um", "650"]}
    says = {"no pixel size": "--pixel-um", "no --um": "add --um", "no wavelength": "--wavelength",
            "na >= ni": "`--ni` on the command line",
            "wavelength in nm": "a wavelength in nm? 520 nm is --wavelength 0.52",
            "pixel in nm": "a size in nm? 650 nm is --pixel-um 0.65"}
    for key, argv in bad.items():
        assert main(argv) == 2, key
        assert says[key] in capsys.readouterr().err, key
        assert not Path(argv[2]).exists(), key


def test_held_out_tables_pool_per_image_metrics_over_all_and_signal_pixels():
    """The published tables: "all" is the mean over images of each image's metrics on every pixel, "signal" on its
    signal pixels (every pixel where none stands out); checked against defocus_metrics with an estimator that is not
    constant, on three images (one would hide a median in place of the mean)."""
    from scipy.ndimage import gaussian_filter

    from napari_linblur.evaluation.defocus import EvalConfig, evaluate_spatially_varying, heldout_images
    from napari_linblur.inference.defocus_ops import signal_mask
    from napari_linblur.metrics.defocus import defocus_metrics

    def guess(img):  # depends on the image: brighter = blurrier
        g = gaussian_filter(np.asarray(img, np.float64), 2.0)
        return 10.0 * (g - g.min()) / (np.ptp(g) + 1e-9)

    cfg = EvalConfig(n_images=3, size=48)
    table = evaluate_spatially_varying({"guess": guess}, cfg)
    for kind in ("microscopy", "shuffle"):
        data = heldout_images(kind, cfg)
        per_all = [defocus_metrics(guess(d["image"]), d["sigma"]) for d in data]
        masks = [signal_mask(d["image"]) for d in data]
        per_sig = [defocus_metrics(guess(d["image"]), d["sigma"], mask=m if m.any() else None)
                   for d, m in zip(data, masks)]
        row = table[kind]["guess"]
        for key in ("mae_norm", "abs_rel", "rmse", "delta1"):
            assert row["all"][key] == pytest.approx(np.mean([r[key] for r in per_all]), rel=1e-9), (kind, key)
            assert row["signal"][key] == pytest.approx(np.mean([r[key] for r in per_sig]), rel=1e-9), (kind, key)
        assert row["all"]["mae_px"] == pytest.approx(10 * row["all"]["mae_norm"])
    assert any(m.any() and not m.all() for m in (signal_mask(d["image"]) for d in heldout_images("microscopy", cfg)))
    assert table["microscopy"]["guess"]["signal"]["mae_px"] != table["microscopy"]["guess"]["all"]["mae_px"]


def test_evaluate_cli_tiny(tmp_path, tiny_model, capsys):
    out = tmp_path / "ev"
    assert main(["evaluate", "defocus", "--model", f"tiny={tiny_model}", "--n-images", "1", "--size", "48",
                 "--no-through-focus", "--no-bbbc006", "--device", "cpu", "--tta", "2", "--out", str(out)]) == 0
    text_js = (out / "defocus_eval.json").read_text()
    res = json.loads(text_js, parse_constant=lambda c: pytest.fail(f"non-standard JSON token {c}"))
    table = res["spatially_varying"]["microscopy"]
    assert set(table) == {"tiny", "tiny, self-ensemble x2", "focus-measure (calibrated var. of Laplacian)",
                          "Zhuo & Sim 2011", "constant 5 px (reference: no image)"}
    # the reference row: the error of a 5 px map, which ignores the image, straight from the true maps
    from napari_linblur.evaluation.defocus import EvalConfig, heldout_images

    truth = heldout_images("microscopy", EvalConfig(n_images=1, size=48))[0]["sigma"]
    assert table["constant 5 px (reference: no image)"]["all"]["mae_px"] == pytest.approx(
        float(np.abs(truth - 5.0).mean()), rel=1e-6)
    for r in table.values():
        assert 0 <= r["all"]["mae_px"] < 10 and 0 <= r["all"]["delta3"] <= 1
    text = capsys.readouterr().out
    assert "AbsRel" in text and "δ<1.25" in text and (out / "defocus_eval.md").exists()
    # error by true σ: bins cover [0, 10], fractions sum to 1, MAE >= |bias|
    bins = table["tiny"]["by_sigma"]
    assert [b["lo"] for b in bins] == [0, 2, 4, 6, 8] and sum(b["fraction"] for b in bins) == pytest.approx(1.0)
    assert all(b["mae_px"] >= abs(b["bias_px"]) - 1e-9 for b in bins if b["fraction"] > 0)
    assert "error by true σ" in (out / "defocus_eval.md").read_text()
    # the Markdown names the command that made it, as the JSON does: a pair of reports can be told to match
    last = (out / "defocus_eval.md").read_text().splitlines()[-1]
    assert last == f"Command: `{json.loads((out / 'defocus_eval.json').read_text())['command']}`"
    # the recorded command is the exact one: parsing it again gives the same options
    import shlex

    from napari_linblur.cli.main import build_parser

    again = build_parser().parse_args(shlex.split(res["command"])[1:])
    assert again.model == [f"tiny={tiny_model}"] and again.n_images == 1 and again.size == 48 and again.tta == 2
    assert again.no_through_focus and again.no_bbbc006 and not again.no_baselines and again.out == str(out)
    # the model card's metrics are read from this JSON (training.defocus.ship_model)
    from napari_linblur.training.defocus import card_metrics

    m = card_metrics(res, "tiny", "linblur evaluate defocus ...")
    best_classical = min(table[c]["all"]["mae_px"] for c in table
                         if not c.startswith("tiny") and not c.startswith("constant"))
    assert m["microscopy_all"]["mae_px"] == pytest.approx(table["tiny"]["all"]["mae_px"], abs=1e-4)
    assert m["microscopy_all"]["mae_ratio_best_classical"] == pytest.approx(
        best_classical / table["tiny"]["all"]["mae_px"], abs=0.01)
    assert m["microscopy_all"]["mae_ratio_constant"] == pytest.approx(
        table["constant 5 px (reference: no image)"]["all"]["mae_px"] / table["tiny"]["all"]["mae_px"], abs=0.01)
    assert "through_focus_vectorial" not in m and "bbbc006_plane0" not in m  # not run here


def test_evaluate_json_is_strict_when_a_metric_has_no_pixels(tmp_path, tiny_model):
    """A tiny image can leave a σ bin without signal pixels: its metric is null in the JSON, not a NaN token."""
    out = tmp_path / "ev"
    assert main(["evaluate", "defocus", "--model", f"tiny={tiny_model}", "--n-images", "1", "--size", "33",
                 "--no-through-focus", "--no-bbbc006", "--no-baselines", "--device", "cpu", "--out", str(out)]) == 0
    res = json.loads((out / "defocus_eval.json").read_text(),
                     parse_constant=lambda c: pytest.fail(f"non-standard JSON token {c}"))
    bins = [b for table in res["spatially_varying"].values() for b in table["tiny"]["by_sigma"]]
    assert any(b["mae_px_signal"] is None for b in bins) and all(b["mae_px"] is not None for b in bins)


def test_evaluate_cli_photons(tmp_path, tiny_model, capsys):
    """--photons sets the held-out images' brightness: recorded, shown, changes the data, validated."""
    base = ["evaluate", "defocus", "--model", f"tiny={tiny_model}", "--n-images", "1", "--size", "48",
            "--no-through-focus", "--no-bbbc006", "--no-baselines", "--device", "cpu"]
    res = {}
    for ph in ("800", "50000"):
        out = tmp_path / f"ev{ph}"
        assert main([*base, "--photons", ph, "--out", str(out)]) == 0
        res[ph] = json.loads((out / "defocus_eval.json").read_text())
        assert res[ph]["config"]["photons"] == float(ph)
        assert f"{float(ph):g} e⁻ peak" in (out / "defocus_eval.md").read_text()
    a = res["800"]["spatially_varying"]["microscopy"]["tiny"]["all"]["mae_px"]
    b = res["50000"]["spatially_varying"]["microscopy"]["tiny"]["all"]["mae_px"]
    assert a != b  # same seed and maps, different noise level -> different estimates
    capsys.readouterr()
    assert main([*base, "--photons", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "--photons" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_evaluate_on_pictures_no_model_choice_has_seen(tmp_path, tiny_model, capsys):
    """--shuffle-sources draws the pixel-shuffled test images from other held-out pictures (the validation runs that
    chose the shipped models drew crops of the default ones): recorded, named in the tables, different images; a
    training picture or one scikit-image would download is refused before anything runs."""
    from napari_linblur.evaluation.defocus import EvalConfig, heldout_images
    from napari_linblur.training.defocus import FRESH_SOURCES, HELDOUT_SOURCES, TRAIN_SOURCES

    assert not set(FRESH_SOURCES) & (set(TRAIN_SOURCES) | set(HELDOUT_SOURCES))
    base = ["evaluate", "defocus", "--model", f"tiny={tiny_model}", "--n-images", "3", "--size", "48",
            "--no-through-focus", "--no-bbbc006", "--no-baselines", "--device", "cpu"]
    out = tmp_path / "fresh"
    assert main([*base, "--shuffle-sources", *FRESH_SOURCES, "--out", str(out)]) == 0
    res = json.loads((out / "defocus_eval.json").read_text())
    assert res["config"]["shuffle_sources"] == list(FRESH_SOURCES)
    assert "from cat / stereo_motorcycle / clock" in (out / "defocus_eval.md").read_text()
    fresh = heldout_images("shuffle", EvalConfig(n_images=3, size=48, shuffle_sources=FRESH_SOURCES))
    held = heldout_images("shuffle", EvalConfig(n_images=3, size=48))
    for a, b in zip(fresh, held):  # same seed, so the same σ maps; other pictures, so other contents
        np.testing.assert_array_equal(a["sigma"], b["sigma"])
        assert not np.array_equal(np.sort(a["content"], None), np.sort(b["content"], None))
    capsys.readouterr()
    for name, says in (("camera", "a training picture"), ("brain", "not a picture that ships")):
        assert main([*base, "--shuffle-sources", name, "--out", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert f"--shuffle-sources {name}: {says}" in err and not (tmp_path / name).exists(), err
    with pytest.raises(ValueError, match="shuffle_sources moon: a training picture"):
        heldout_images("shuffle", EvalConfig(n_images=1, size=48, shuffle_sources=("coins", "moon")))


def test_batchnorm_re_estimated_by_the_loop_unless_cancelled(tmp_path):
    from napari_linblur.training.defocus import DefocusTask
    from napari_linblur.training.loop import TrainConfig, train

    cfg = dict(TINY, norm="batch")
    done = train(DefocusTask(cfg, _data(), seed=0, bn_batches=3),
                 TrainConfig(out=str(tmp_path / "a"), steps=2, device="cpu", progress=False))
    card = registry.read_card(done.model_path)
    assert card["bn_recalibration"] == {"batches": 3, "batch_size": 2}
    assert card["validation"] == done.metrics and "validation_before_bn_recalibration" in card

    def validation_of_saved(res):  # the validation of the weights the run saved (BatchNorm statistics included)
        with torch.no_grad():
            return DefocusTask(cfg, _data(), seed=0).validate(registry.load_model(res.model_path, device="cpu").eval())

    assert card["validation"] == pytest.approx(validation_of_saved(done), rel=1e-6)
    stopped = train(DefocusTask(cfg, _data(), seed=0, bn_batches=3),
                    TrainConfig(out=str(tmp_path / "b"), steps=2, device="cpu", progress=False),
                    should_stop=lambda: True)  # a cancel before the first step: no model (untrained weights)
    assert not stopped.finished and stopped.steps_done == 0 and not Path(stopped.model_path).exists()
    # cancelled after a periodic validation (step 2), at step 3: the card validates the step-3 weights it saved
    calls = iter(range(10))
    mid = train(DefocusTask(cfg, _data(), seed=0, bn_batches=3),
                TrainConfig(out=str(tmp_path / "c"), steps=4, val_every=2, device="cpu", progress=False, threads=1),
                should_stop=lambda: next(calls) >= 3)
    card = registry.read_card(mid.model_path)
    assert mid.steps_done == card["training"]["steps"] == 3 and "bn_recalibration" not in card
    assert card["validation"] == mid.metrics == pytest.approx(validation_of_saved(mid), rel=1e-6)
    with pytest.raises(ValueError, match="bn_batches must be >= 0"):
        DefocusTask(cfg, _data(), bn_batches=-1)


def test_train_on_own_stacks_uses_their_in_focus_planes(tmp_path, capsys, monkeypatch):
    """--content-from: the sharpest plane of each of the user's stacks, pixel-shuffled, replaces the bundled
    pictures as content; the card records which planes; bad input is refused before a run folder exists."""
    from napari_linblur.io.omezarr import write_ome_zarr
    from napari_linblur.optics.convolve import fft_convolve
    from napari_linblur.optics.psf import gaussian_psf
    from napari_linblur.training.defocus import content_images, sharp_content

    rng = np.random.default_rng(0)
    sharp = [(rng.random((40, 48)) > 0.9) * rng.uniform(500, 3000) + 100 for _ in range(3)]
    # three stacks of 5 planes; the sharp plane is 3, 1, 3 (the others blurred by 1.5-4 px)
    stacks = []
    for k, img in enumerate(sharp):
        focus = 1 if k == 1 else 3
        stacks.append([img if z == focus else fft_convolve(img, gaussian_psf(1.5 + abs(z - focus)))
                       for z in range(5)])
    data = np.asarray(stacks, np.float32)[:, None]  # (T, C, Z, Y, X)
    path = write_ome_zarr(tmp_path / "mine.zarr", data, axes="tczyx", channel_names=["nuclei"])
    cfg = DefocusDataConfig(content_from=str(path), content_channel="nuclei", crop=16, render_size=32)
    images, planes = content_images(cfg)
    assert [p["plane"] for p in planes] == [3, 1, 3] and len(images) == 3
    lo, hi = np.percentile(sharp[1], [0.1, 99.9])
    assert np.allclose(images[1], np.clip((sharp[1] - lo) / (hi - lo), 0, 1), atol=1e-6)
    # the shuffle branch draws the user's images (same draws as with the bundled pictures' names)
    a, kind_a = sharp_content(32, "shuffle", np.random.default_rng(4), images)
    b, _ = sharp_content(32, "shuffle", np.random.default_rng(4), images)
    assert kind_a == "shuffle" and np.array_equal(a, b)
    out = tmp_path / "run"
    args = ["train", "defocus", "--content-from", str(path), "--content-channel", "0", "--out", str(out),
            "--steps", "2", "--width", "4", "--crop", "16", "--render-size", "32", "--batch-size", "2",
            "--pool-size", "2", "--device", "cpu", "--no-progress", "--val-every", "2", "--ckpt-every", "2",
            "--threads", "1", "--bn-batches", "1"]
    assert main(args) == 0
    card = registry.read_card(out / "model.safetensors")
    assert card["data"]["recipe"]["content_from"] == str(Path(path).resolve())
    assert card["data"]["recipe"]["content_channel"] == 0
    assert card["data"]["content_path"] == str(Path(path).resolve())
    assert [p["plane"] for p in card["data"]["content_planes"]] == [3, 1, 3]
    assert card["data"]["sources_used"] is False and "not used" in card["data"]["sources_note"]
    from napari_linblur.training.defocus import card_recipe

    assert "content_from" not in card_recipe(str(out / "model.safetensors"))  # not inherited by other runs
    # --resume from another folder, naming the same content and weights another way, continues the run
    monkeypatch.chdir(tmp_path)
    again = [a if a != str(path) else "./mine.zarr" for a in args]
    again[again.index("--steps") + 1] = "3"
    assert main([*again, "--resume"]) == 0
    assert registry.read_card(out / "model.safetensors")["training"]["steps"] == 3
    # a rewritten file inside a folder is read again (the cache follows the files, not the folder)
    folder = tmp_path / "tiffs"
    folder.mkdir()
    tifffile.imwrite(folder / "s0.tif", np.asarray(stacks[0], np.float32))
    first = content_images(DefocusDataConfig(content_from=str(folder)))[0][0]
    tifffile.imwrite(folder / "s0.tif", np.asarray(stacks[1], np.float32))
    second = content_images(DefocusDataConfig(content_from=str(folder)))[0][0]
    assert not np.array_equal(first, second)
    capsys.readouterr()
    for extra, says in ((["--content-plane", "7"], "out of range"), (["--content-channel", "9"], "channel"),
                        ([], "no such file")):
        bad = tmp_path / f"bad{len(extra)}{says[:3]}"
        src = str(path) if says != "no such file" else str(tmp_path / "nothing.zarr")
        cmd = [a if a != str(path) else src for a in args]
        cmd[cmd.index("--out") + 1] = str(bad)
        cmd = [c for c in cmd if c not in ("--content-channel", "0")] + extra
        assert main(cmd) == 2
        assert says in capsys.readouterr().err and not bad.exists()
    assert main(["train", "defocus", "--content-plane", "2", "--out", str(tmp_path / "x"), "--steps", "1"]) == 2
    assert "need --content-from" in capsys.readouterr().err
    # a run folder inside the content's store would write the model into the user's data
    inside = [a if a != str(out) else str(Path(path) / "run") for a in args]
    assert main(inside) == 2
    assert "--content-from" in capsys.readouterr().err and not (Path(path) / "run").exists()
    nan = data.copy()
    nan[0, 0, 3, 0, 0] = np.nan
    write_ome_zarr(tmp_path / "nan.zarr", nan, axes="tczyx")
    with pytest.raises(ValueError, match="NaN or Inf"):
        content_images(DefocusDataConfig(content_from=str(tmp_path / "nan.zarr")))
    # complex content lost its imaginary part to a float32 cast, silently; the reader refuses it at open now
    tifffile.imwrite(tmp_path / "complex.tif", np.asarray(stacks[0], np.complex64))
    with pytest.raises(ValueError, match="complex.tif: holds complex64 values, not intensities"):
        content_images(DefocusDataConfig(content_from=str(tmp_path / "complex.tif")))


_TINY_RUN = ["--content", "shuffle", "--crop", "16", "--render-size", "32", "--batch-size", "2", "--pool-size", "2",
             "--device", "cpu", "--no-progress", "--threads", "1", "--bn-batches", "0", "--ckpt-every", "2",
             "--val-every", "2"]


def test_resume_needs_no_init_file_and_the_checkpoint_wins(tmp_path, tiny_model):
    """--resume continues from the checkpoint, which holds every weight: the --init file may be gone (moved,
    deleted); one replaced by other weights is not read either (a warning says so), and the card keeps the init
    recorded when the run started, never the file's new content."""
    import shutil

    init = tmp_path / "init.safetensors"
    shutil.copy(tiny_model, init)
    sha = registry.sha256_file(init)
    common = ["train", "defocus", "--init", str(init), *_TINY_RUN]
    assert main([*common, "--steps", "4", "--out", str(tmp_path / "full")]) == 0
    assert main([*common, "--steps", "2", "--out", str(tmp_path / "part")]) == 0
    init.unlink()
    assert main([*common, "--steps", "4", "--out", str(tmp_path / "part"), "--resume"]) == 0
    full = registry.load_model(tmp_path / "full" / "model.safetensors", device="cpu")
    part = registry.load_model(tmp_path / "part" / "model.safetensors", device="cpu")
    for k, v in full.state_dict().items():
        torch.testing.assert_close(part.state_dict()[k], v, rtol=0, atol=0)
    assert part.card["init"] == full.card["init"] and part.card["init"]["sha256"] == sha
    assert part.card["training"]["steps"] == 4
    # the same path now holds other weights: the checkpoint wins, the card keeps the recorded init
    torch.manual_seed(1)
    registry.save_model(HDMENet(**full.card["config"]), init, {"architecture": "HDMENet", "task": "defocus",
                                                                "config": full.card["config"]})
    with pytest.warns(UserWarning, match=f"not the model this run started from.*{sha[:12]}"):
        assert main([*common, "--steps", "6", "--out", str(tmp_path / "part"), "--resume"]) == 0
    card = registry.read_card(tmp_path / "part" / "model.safetensors")
    assert card["init"]["sha256"] == sha and card["training"]["steps"] == 6


def _fake_train(calls):
    """A stand-in for the training loop that records the task and configuration it is given and renders the task's
    pool (which logs a progress line), without training."""
    from napari_linblur.training.loop import TrainResult

    def train(task, cfg, **kw):
        calls.append((task, cfg))
        task.pool()
        return TrainResult(Path(cfg.out) / "model.safetensors", cfg.steps, True, {"val_loss": 0.5}, 1.0)

    return train


def test_short_runs_warm_up_over_a_tenth_of_their_steps(tmp_path, monkeypatch):
    """A short run does not spend all its steps warming up; runs of 500 steps or more keep the 50 warm-up steps
    of the shipped recipes, and a --resume keeps the warm-up its run started with (--steps may grow)."""
    from napari_linblur.training import loop

    calls = []
    monkeypatch.setattr(loop, "train", _fake_train(calls))
    for steps, warmup in ((20, 2), (3, 1), (499, 49), (500, 50), (700, 50), (2000, 50)):
        assert main(["train", "defocus", *_TINY_RUN, "--steps", str(steps), "--out", str(tmp_path / "r")]) == 0
        assert calls[-1][1].warmup == warmup, steps
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "train_config.json").write_text(json.dumps({"task": "defocus", "steps": 20, "warmup": 2}))
    assert main(["train", "defocus", *_TINY_RUN, "--steps", "40", "--out", str(tmp_path / "r"), "--resume"]) == 0
    assert calls[-1][1].warmup == 2
    # a short run started before warm-ups were shortened resumes with the 50 steps it recorded
    (tmp_path / "r" / "train_config.json").write_text(json.dumps({"task": "defocus", "steps": 20, "warmup": 50}))
    assert main(["train", "defocus", *_TINY_RUN, "--steps", "30", "--out", str(tmp_path / "r"), "--resume"]) == 0
    assert calls[-1][1].warmup == 50


def test_an_explicit_warmup_is_kept_and_a_bad_one_is_refused_before_any_file(tmp_path, monkeypatch, capsys):
    """--warmup reproduces a run made with another warm-up (the 300-step comparisons of docs/results/defocus.md used
    50); a negative or fractional one names the option and writes nothing."""
    from napari_linblur.training import loop

    calls = []
    monkeypatch.setattr(loop, "train", _fake_train(calls))
    assert main(["train", "defocus", *_TINY_RUN, "--steps", "300", "--warmup", "50", "--out", str(tmp_path / "r")]) == 0
    assert calls[-1][1].warmup == 50
    monkeypatch.undo()
    assert main(["train", "defocus", *_TINY_RUN, "--steps", "20", "--warmup", "-1",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--warmup) must be an integer >= 0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit):  # argparse: "invalid int value"
        main(["train", "defocus", *_TINY_RUN, "--warmup", "2.5", "--out", str(tmp_path / "bad")])


def test_a_short_run_records_its_warmup(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "defocus", *_TINY_RUN, "--width", "4", "--steps", "20", "--out", str(out)]) == 0
    assert json.loads((out / "train_config.json").read_text())["warmup"] == 2
    assert registry.read_card(out / "model.safetensors")["training"]["warmup"] == 2
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["lr"] < log[0]["lr"]  # past its warm-up, the learning rate decays within the run


@pytest.mark.parametrize("rank", [0, 1])
def test_under_torchrun_only_rank_0_prints(tmp_path, monkeypatch, capsys, rank):
    """Every rank of a torchrun launch runs the command: only rank 0 prints progress and the summary."""
    from napari_linblur.training import loop

    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(loop, "train", _fake_train([]))
    run = [a for a in _TINY_RUN if a != "--no-progress"]
    assert main(["train", "defocus", *run, "--steps", "2", "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    if rank == 0:
        assert "rendered a pool" in printed and "finished after 2 steps" in printed
    else:
        assert printed == ""


def test_an_out_folder_holding_a_models_files_is_not_overwritten(tmp_path, capsys):
    """`train … --init mymodel/model.safetensors --out mymodel` replaced the init weights, and a model copied into a
    folder without a run log was replaced silently; a --resume without a checkpoint left an empty folder behind."""
    base = ["train", "defocus", "--content", "shuffle", "--steps", "1", "--width", "4", "--crop", "16",
            "--render-size", "32", "--batch-size", "2", "--pool-size", "2", "--device", "cpu", "--no-progress",
            "--threads", "1"]
    first = tmp_path / "first"
    assert main([*base, "--out", str(first)]) == 0
    mine = tmp_path / "mymodel"
    mine.mkdir()
    for name in ("model.safetensors", "model.json"):
        (mine / name).write_bytes((first / name).read_bytes())
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    capsys.readouterr()
    no_width = [a for a in base if a not in ("--width", "4")]  # the architecture comes from --init
    assert main([*no_width, "--init", str(mine / "model.safetensors"), "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert "already holds model.safetensors, model.json, which this run would replace" in err, err
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before
    assert main([*base, "--resume", "--out", str(tmp_path / "never")]) == 2
    assert "no checkpoint" in capsys.readouterr().err and not (tmp_path / "never").exists()


def test_training_options_that_would_be_ignored_or_are_impossible_are_refused(tmp_path, capsys):
    """--content-from with --content phantom was silently unused (and recorded in the card as if used); an explicit
    --render-size below --crop (or negative) was raised to --crop without a word; a NaN in --content-from named
    best_focus's argument instead of the option."""
    stack = np.random.default_rng(0).random((1, 4, 64, 64)).astype(np.float32)  # one stack of 4 planes
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, stack)
    stack[0, :, 3, 3] = np.nan
    nan = tmp_path / "nan.tif"
    tifffile.imwrite(nan, stack, metadata={"axes": "QZYX"})
    base = ["train", "defocus", "--steps", "1", "--width", "4", "--crop", "16", "--batch-size", "2",
            "--pool-size", "2", "--device", "cpu", "--no-progress", "--threads", "1"]
    cases = [
        (["--content", "phantom", "--content-from", str(good)], "not 'phantom', which would leave it unused"),
        (["--render-size", "8"], "must be in (0, render_size (--render-size) = 8]"),
        (["--render-size", "-5"], "render_size (--render-size) = -5]"),
        (["--content", "shuffle", "--content-from", str(nan), "--render-size", "32"],
         f"--content-from {nan}: "),
    ]
    for i, (extra, says) in enumerate(cases):
        out = tmp_path / f"run{i}"
        assert main([*base, *extra, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert says in err and ("finite" in err or str(nan) not in extra), err
        assert not out.exists()


def test_the_same_command_and_seed_give_the_same_weights(tmp_path):
    """Same command, seed and --threads: identical weight tensors (the .safetensors files differ only in their
    card, which records --out and the elapsed time)."""
    from safetensors.torch import load_file

    base = ["train", "defocus", "--content", "mixed", "--steps", "3", "--width", "4", "--crop", "16",
            "--render-size", "32", "--batch-size", "2", "--pool-size", "2", "--device", "cpu", "--no-progress",
            "--threads", "1", "--seed", "5"]
    for run in ("a", "b"):
        assert main([*base, "--out", str(tmp_path / run)]) == 0
    a, b = (load_file(str(tmp_path / run / "model.safetensors")) for run in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_runs_into_one_folder_are_refused_while_the_first_runs(tmp_path, capsys):
    """Two `linblur train` into the same --out (or a requeued --resume while the old job still ran) both ran and
    left one folder with both runs' log rows interleaved and one run's checkpoint beside the other's model. A run
    holds an OS lock on its folder; the second is refused, and the lock goes with its process (also kill -9)."""
    import subprocess
    import sys

    from napari_linblur.training.loop import RunLock

    out = tmp_path / "run"
    cmd = ["train", "defocus", *_TINY_RUN, "--width", "4", "--steps", "2", "--out", str(out)]
    out.mkdir()
    held = RunLock(out)  # as a run in progress holds it
    try:
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert f"{out} is being written by another training run (pid " in err and "use another --out" in err
        assert sorted(p.name for p in out.iterdir()) == [".run.lock"]  # nothing of the refused run was written
    finally:
        held.release()
    # a holder killed with SIGKILL: its lock is gone with it, the next run trains
    code = f"from napari_linblur.training.loop import RunLock; RunLock({str(out)!r}); print('held', flush=True); " \
           "import time; time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(cmd) == 2
        capsys.readouterr()
    finally:
        holder.kill()
        holder.wait()
    left = out / ".checkpoint.safetensors.k1ll3d.tmp"  # what a kill during a checkpoint write leaves
    left.write_bytes(b"partial")
    assert main(cmd) == 0 and (out / "model.safetensors").exists()
    assert not left.exists()  # the run holding the folder's lock removes its own kind of leftovers
    # weights saved without their card (a kill between the two files): the error says how to repair the run
    from napari_linblur.models import registry

    model = out / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-8] + b"\x00" * 8)
    with pytest.raises(ValueError, match="killed while saving its model leaves this: run its command again with "
                                         "--resume"):
        registry.load_model(model, device="cpu")


def test_evaluate_bbbc006_plane_is_found_named_or_said_skipped(tmp_path, tiny_model, monkeypatch, capsys):
    """The BBBC006 check read a hard-coded machine path and was silently left out elsewhere (an installed package):
    it now reads --bbbc006 TIFF or the sample image ($NAPARI_LINBLUR_DATA), and a missing sample is said."""
    import shutil

    from napari_linblur.io import bbbc006

    try:
        src = bbbc006.find_bbbc006_image()
    except FileNotFoundError:
        pytest.skip("BBBC006 sample image not present")
    base = ["evaluate", "defocus", "--model", f"tiny={tiny_model}", "--n-images", "1", "--size", "48",
            "--no-through-focus", "--no-baselines", "--device", "cpu"]
    mine = tmp_path / "my data"
    mine.mkdir()
    shutil.copy(src, mine / src.name)
    assert main([*base, "--bbbc006", str(mine / src.name), "--out", str(tmp_path / "given")]) == 0
    res = json.loads((tmp_path / "given" / "defocus_eval.json").read_text())
    assert res["bbbc006"]["file"] == src.name and res["config"]["bbbc006"] == str(mine / src.name)
    from napari_linblur.evaluation.defocus import bbbc006_file

    assert bbbc006_file(str(mine)) == mine / src.name  # a folder, as $NAPARI_LINBLUR_DATA names one
    odd = tmp_path / "bb[1]"
    odd.mkdir()
    shutil.copy(src, odd / src.name)
    assert bbbc006_file(str(odd / src.name)) == odd / src.name  # [ ] in a real name is not a pattern
    assert 0 < res["bbbc006"]["signal_fraction"] < 1 and "tiny" in res["bbbc006"]["estimators"]
    # the sample lookup: $NAPARI_LINBLUR_DATA first, and nothing else for an installed package (no checkout)
    monkeypatch.setenv("NAPARI_LINBLUR_DATA", str(mine))
    assert bbbc006.data_dirs()[0] == mine and bbbc006.find_bbbc006_image() == mine / src.name
    monkeypatch.setattr(bbbc006, "data_dirs", lambda: [tmp_path / "empty"])
    with pytest.warns(UserWarning, match="BBBC006 check was skipped.*NAPARI_LINBLUR_DATA"):
        assert main([*base, "--out", str(tmp_path / "none")]) == 0
    res = json.loads((tmp_path / "none" / "defocus_eval.json").read_text())
    assert "bbbc006" not in res and "not found" in res["bbbc006_skipped"]
    assert "BBBC006 plane 0 (32 µm above focus): skipped" in (tmp_path / "none" / "defocus_eval.md").read_text()
    # a named file that is not there, or named along with --no-bbbc006: refused before any work
    capsys.readouterr()
    assert main([*base, "--bbbc006", str(tmp_path / "nope.tif"), "--out", str(tmp_path / "bad")]) == 2
    assert "--bbbc006: no BBBC006 TIFF at" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main([*base, "--bbbc006", str(mine / src.name), "--no-bbbc006", "--out", str(tmp_path / "bad")]) == 2


def test_defocus_map_and_focus_take_amp_and_record_it(tmp_path, tiny_model, capsys):
    """defocus-map and focus had no --amp: their precision was whatever 'auto' picked on the machine (bf16 on a CPU
    with native bf16, float32 elsewhere), so a lab could not get the same maps on a second machine. Both take it
    now, and the outputs record it with the tile."""
    import tifffile
    import zarr

    import napari_linblur as nl

    stack = np.random.default_rng(0).poisson(300, (2, 40, 48)).astype(np.uint16) + 100
    tif = tmp_path / "s.tif"
    tifffile.imwrite(tif, stack, photometric="minisblack")
    out = tmp_path / "m.zarr"
    assert main(["defocus-map", str(tif), str(out), "--model", str(tiny_model), "--amp", "off", "--device", "cpu",
                 "--no-progress"]) == 0
    group = zarr.open_group(out, mode="r")
    assert group.attrs["linblur"]["amp"] == "off" and group.attrs["linblur"]["tile"] == "automatic"
    np.testing.assert_array_equal(group["0"][:], nl.estimate_defocus(stack, model=str(tiny_model), amp="off",
                                                                     device="cpu"))
    js = tmp_path / "f.json"
    assert main(["focus", str(tif), "--model", str(tiny_model), "--amp", "off", "--device", "cpu", "--json",
                 str(js)]) == 0
    assert json.loads(js.read_text())["amp"] == "off"
