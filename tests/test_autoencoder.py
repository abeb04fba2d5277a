"""LinearLatentAE configs, the paper-000 losses, triplet data and `linblur train ae` (incl. resume after SIGKILL)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_linblur.models import registry
from napari_linblur.models.autoencoder import CONFIGS, LinearLatentAE
from napari_linblur.training.ae import (
    AETask,
    load_fields,
    make_triplets,
    split_fields,
    ten_crop_boxes,
)

TINY = {"arch": "resnet", "channels": [8, 16], "latent_channels": 4, "norm": "none", "output": "linear"}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from napari_linblur.synth.dataset import write_synthetic_dataset
    from napari_linblur.synth.recipes import get_recipe

    path = tmp_path_factory.mktemp("ae") / "d.zarr"
    recipe = get_recipe("bbbc006-like", shape=(48, 64), keep_even=True)
    write_synthetic_dataset(path, recipe, fields=5, seed=3, progress=False)
    return path


def test_paper_config_is_the_papers_network():
    m = LinearLatentAE(config="paper").eval()
    convs = [mod for mod in m.encoder if isinstance(mod, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1024]
    assert all(c.kernel_size == (3, 3) and c.stride == (2, 2) for c in convs)
    assert sum(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.encoder) == 5
    assert sum(isinstance(mod, torch.nn.LeakyReLU) for mod in m.encoder) == 5
    tconvs = [mod for mod in m.decoder if isinstance(mod, torch.nn.ConvTranspose2d)]
    assert len(tconvs) == 6 and isinstance(m.decoder[-1], torch.nn.Conv2d) and m.sigmoid
    with torch.no_grad():
        z = m.encode(torch.rand(2, 1, 128, 128))
        y = m.decode(z)
    assert tuple(z.shape) == (2, 1024, 4, 4)
    assert tuple(y.shape) == (2, 1, 128, 128) and float(y.min()) >= 0 and float(y.max()) <= 1


def test_default_config_is_fully_convolutional_and_linear_output():
    torch.manual_seed(0)  # random weights: unseeded, the output range check failed on some draws
    m = LinearLatentAE(config="default").eval()
    assert not any(isinstance(mod, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)) for mod in m.modules())
    with torch.no_grad():
        for side in (32, 96):
            z = m.encode(torch.rand(1, 1, side, side + 16))
            assert z.shape[-2:] == (side // m.multiple, (side + 16) // m.multiple)
        # linear output: a large input maps outside [0, 1] (a sigmoid could not)
        y = m(10 * torch.ones(1, 1, 32, 32))
    assert not m.sigmoid and (float(y.max()) > 1 or float(y.min()) < 0)
    again = LinearLatentAE(**m.config)
    assert again.config == m.config
    assert sum(p.numel() for p in m.parameters()) < sum(p.numel() for p in LinearLatentAE(config="paper").parameters())


def test_bad_configs_name_the_argument():
    with pytest.raises(ValueError, match="config"):
        LinearLatentAE(config="huge")
    with pytest.raises(ValueError, match="norm"):
        LinearLatentAE(config="default", norm="layer")
    with pytest.raises(ValueError, match="output"):
        LinearLatentAE(config="default", output="tanh")
    assert set(CONFIGS) == {"paper", "default"}


@pytest.mark.parametrize("bad, says", [
    ({"channels": 16}, "channels=16: must be a non-empty list of positive ints"),
    ({"channels": []}, "channels=[]"),
    ({"channels": [8, 0]}, "channels=[8, 0]"),
    ({"channels": [8, 16.5]}, "channels=[8, 16.5]"),
    ({"latent_channels": 0}, "latent_channels=0: must be an int >= 1"),
    ({"blocks": -1}, "blocks=-1: must be an int >= 0"),
    ({"blocks": 1.5}, "blocks=1.5"),
    ({"in_channels": 0}, "in_channels=0"),
    ({"arch": "unet"}, "arch='unet': must be 'paper' or 'resnet'"),
    ({"norm": "group", "channels": [12, 16]}, "norm='group'"),
    ({"latent_channel": 4}, "unknown key(s) ['latent_channel']"),
])
def test_bad_config_values_are_refused_naming_the_key(bad, says):
    """Every value is checked before a layer is built (a bad one used to fail later, at the first forward pass,
    or train silently, e.g. blocks=-1)."""
    with pytest.raises(ValueError) as err:
        LinearLatentAE(**{**TINY, **bad})
    assert says in str(err.value)
    assert LinearLatentAE(**{**TINY, "blocks": 0}).config["blocks"] == 0  # no residual blocks is a valid network


def test_train_cli_checks_the_model_config_before_writing_anything(tiny_data, tmp_path, capsys):
    """A bad --model-config value is an error naming the option and the key before --out is written: a rerun with
    a fixed config is not told that --out "already holds a training run"."""
    from napari_linblur.cli.main import main

    out = tmp_path / "run"
    common = ["train", "ae", "--data", str(tiny_data), "--out", str(out), "--steps", "1", "--batch-size", "2",
              "--crop", "32", "--no-progress", "--device", "cpu", "--threads", "1"]
    for bad, says in [({"in_channels": 2}, "in_channels=2: must be 1 for train ae"),
                      ({"latent_channels": 0}, "latent_channels=0"), ({"channels": 16}, "channels=16"),
                      ({"blocks": -1}, "blocks=-1"), ({"norm": "layer"}, "norm='layer'"),
                      ({"output": "tanh"}, "output='tanh'"), ({"channels": [8, "16"]}, "channels=[8, '16']")]:
        assert main([*common, "--model-config", json.dumps({**TINY, **bad})]) == 2, bad
        err = capsys.readouterr().err
        assert "--model-config: " + says in err, err
        assert not out.exists(), bad
    # keys of the resnet network with the paper's: refused, not ignored
    assert main([*common, "--config", "paper", "--model-config", '{"blocks": 2}']) == 2
    assert "--model-config: ['blocks'] apply to arch 'resnet' only" in capsys.readouterr().err
    assert not out.exists()
    assert main([*common, "--model-config", json.dumps(TINY)]) == 0
    assert registry.read_card(out / "model.safetensors")["config"]["channels"] == TINY["channels"]

def test_triplets_general_alpha_and_splits():
    d = np.array([0.0, 4.0, 8.0, 12.0])
    trips = make_triplets(d)
    assert len(trips) == 4
    assert (0, 1, 3, (12 - 4) / 12) in trips  # general alpha, not only midpoints
    assert all(len(t) == 4 for t in make_triplets(d, "midpoint")) and len(make_triplets(d, "midpoint")) == 2
    s = split_fields(30, seed=4)
    assert [len(s[k]) for k in ("train", "val", "test")] == [21, 3, 6]
    allf = np.concatenate(list(s.values()))
    assert sorted(allf.tolist()) == list(range(30))
    assert all(np.array_equal(s[k], split_fields(30, seed=4)[k]) for k in s)
    assert not np.array_equal(s["test"], split_fields(30, seed=5)["test"])
    boxes = ten_crop_boxes((50, 70), 32)
    assert len(boxes) == 10 and len(set(boxes)) == 10 and sum(f for _, _, f in boxes) == 5


def test_task_batches_are_deterministic_and_share_one_normalization(tiny_data):
    from napari_linblur.inference.normalize import fit_normalization

    data = load_fields(tiny_data, "w1")
    f = data.fields[0]
    assert f.planes.shape[0] == 9 and np.all(np.diff(f.defocus_um) > 0) and f.plane_index[0] == 16
    task = AETask(data, TINY, reg="direct", batch_size=3, crop=32, seed=5)
    b1, b2, b3 = task.batch(7), task.batch(7), task.batch(8)
    assert torch.equal(b1["x"], b2["x"]) and not torch.equal(b1["x"], b3["x"])
    assert b1["x"].shape == (3, 3, 1, 32, 32)
    assert torch.all((b1["alpha"] > 0) & (b1["alpha"] < 1))
    # the three planes of a sample share one normalization: recompute it from the raw planes
    a, b, c, alpha = task._trip[f.name][5]
    n = fit_normalization(f.planes[a], f.planes[b], f.planes[c])
    x = task._sample(f, (a, b, c, alpha), 0, 0, False)
    np.testing.assert_allclose(x[0], n.apply(f.planes[a, :32, :32]), rtol=1e-6)
    np.testing.assert_allclose(x[2], n.apply(f.planes[c, :32, :32]), rtol=1e-6)
    # a sharper plane has the higher peak under the shared map (per-image min-max would equalize them)
    assert x[0].max() > x[2].max()
    # focus_fraction: that share of the triplets has the in-focus plane as a (28 of the 84 triplets of 9 planes)
    rng = np.random.default_rng(0)
    for frac, lo, hi in ((1.0, 1.0, 1.0), (0.5, 0.55, 0.78), (0.0, 0.25, 0.42)):
        t = AETask(data, TINY, reg="direct", batch_size=3, crop=32, seed=5, focus_fraction=frac)
        share = np.mean([t._pick_triplet(rng, f)[0] == 0 for _ in range(400)])
        assert lo <= share <= hi, (frac, share)
    assert t.card()["data"]["focus_fraction"] == 0.0
    # the default (0) draws no extra random numbers: its batches are those of the recipe before the option
    assert torch.equal(AETask(data, TINY, reg="direct", batch_size=3, crop=32, seed=5,
                              focus_fraction=0.0).batch(7)["x"],
                       b1["x"])
    with pytest.raises(ValueError, match="focus_fraction"):
        AETask(data, TINY, batch_size=3, crop=32, focus_fraction=1.5)


def test_inputs_normalization_scales_examples_as_the_pair_operations_do(tiny_data):
    """normalization="inputs": an example's scale comes from the two planes an operation receives -- (a, c) for
    synthesis, (b, c) for deblurring (whose sharp target a is never seen at inference) -- half and half."""
    from napari_linblur.inference.normalize import fit_normalization

    data = load_fields(tiny_data, "w1")
    task = AETask(data, TINY, batch_size=3, crop=32, seed=5, normalization="inputs", focus_fraction=1.0)
    f = task.train_fields[0]
    a, b, c, alpha = task._trip[f.name][-1]
    x = task._sample(f, (a, b, c, alpha), 0, 0, False, "deblurring")
    n = fit_normalization(f.planes[b], f.planes[c])
    for i, k in enumerate((a, b, c)):
        np.testing.assert_allclose(x[i], n.apply(f.planes[k, :32, :32]), rtol=1e-6)
    # the in-focus target peaks above both inputs under their scale: deblurring must restore that peak
    assert x[0].max() > x[1:].max()
    x_syn = task._sample(f, (a, b, c, alpha), 0, 0, False, "synthesis")
    np.testing.assert_allclose(x_syn[1], fit_normalization(f.planes[a], f.planes[c]).apply(f.planes[b, :32, :32]),
                               rtol=1e-6)
    # the draws: both uses in a batch stream, and the validation set alternates them
    uses = [task._norm_use(u) for u in np.random.default_rng(0).random(200)]
    assert 0.4 < uses.count("deblurring") / len(uses) < 0.6
    assert [task._norm_use((i % 2) / 2) for i in range(4)] == ["synthesis", "deblurring"] * 2
    b1, b2 = task.batch(7), task.batch(7)
    assert torch.equal(b1["x"], b2["x"])
    triplet = AETask(data, TINY, batch_size=3, crop=32, seed=5, focus_fraction=1.0)
    assert not torch.equal(triplet.batch(7)["x"], b1["x"])
    assert "(b, c) as deblur_pair" in task.card()["data"]["normalization"]
    assert "three planes" in triplet.card()["data"]["normalization"]
    with pytest.raises(ValueError, match=r"normalization \(--normalization\) must be one of"):
        AETask(data, TINY, batch_size=3, crop=32, normalization="pair")


def test_losses_follow_eq_3_and_4_and_detach(tiny_data):
    data = load_fields(tiny_data, "w1")
    torch.manual_seed(0)
    batch = AETask(data, TINY, batch_size=2, crop=32).batch(0)
    parts = {}
    for reg in ("baseline", "indirect", "direct"):
        task = AETask(data, TINY, reg=reg, batch_size=2, crop=32)
        torch.manual_seed(0)
        model = task.build_model()
        loss, p = task.loss(model, batch)
        parts[reg] = (float(loss), p)
    li, pi = parts["indirect"]
    assert li == pytest.approx(0.5 * (float(pi["rec_a"]) + float(pi["rec_c"])) + float(pi["interp_b"]), rel=1e-5)
    ld, pd = parts["direct"]
    assert ld == pytest.approx(li + float(pd["lin"]), rel=1e-5)
    lb, pb = parts["baseline"]
    assert lb == pytest.approx((float(pb["rec_a"]) + float(pb["rec_b"]) + float(pb["rec_c"])) / 3, rel=1e-5)
    # detach: the direct term's gradient does not reach z_b through its own branch
    for detach, expect_zero in ((True, True), (False, False)):
        task = AETask(data, TINY, reg="direct", detach=detach, batch_size=2, crop=32)
        torch.manual_seed(0)
        model = task.build_model()
        out = model(batch["x"], batch["alpha"])
        zb = out["z_b"]
        zb.retain_grad()
        target = zb.detach() if detach else zb
        (target - out["z_interp"]).abs().mean().backward()
        grad = zb.grad
        assert (grad is None or float(grad.abs().sum()) == 0.0) == expect_zero


def _cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "napari_linblur.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_train_cli_resume_after_sigkill_is_exact(tiny_data, tmp_path):
    from napari_linblur.cli.main import main

    common = ["train", "ae", "--data", str(tiny_data), "--model-config", json.dumps(TINY), "--steps", "60",
              "--ckpt-every", "5", "--batch-size", "2", "--crop", "32", "--seed", "2", "--no-progress",
              "--device", "cpu", "--threads", "1", "--reg", "direct"]
    killed = _cli([*common, "--out", str(tmp_path / "part")])
    ckpt = tmp_path / "part" / "checkpoint.safetensors"
    t0 = time.time()
    while not ckpt.exists() and time.time() - t0 < 60:
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "part" / "model.safetensors").exists()  # really interrupted
    assert main([*common, "--out", str(tmp_path / "full")]) == 0  # uninterrupted reference, in-process
    assert main([*common, "--out", str(tmp_path / "part"), "--resume"]) == 0
    a = registry.load_model(tmp_path / "full" / "model.safetensors", device="cpu")
    b = registry.load_model(tmp_path / "part" / "model.safetensors", device="cpu")
    assert b.card["training"]["steps"] == 60 and b.card["data"]["split"] == a.card["data"]["split"]
    assert "linblur synth" in a.card["data_command"] and a.card["regularization"]["reg"] == "direct"
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)
    log = [json.loads(x) for x in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == sorted({r["step"] for r in log}) and "val_loss" in log[-1]
    # --steps may grow on --resume: the warmup (a tenth of a short run's steps) stays the one the run started with
    more = [a if a != "60" else "80" for a in common]
    assert main([*more, "--out", str(tmp_path / "part"), "--resume"]) == 0
    assert registry.load_model(tmp_path / "part" / "model.safetensors", device="cpu").card["training"]["steps"] == 80


def test_train_cli_init_starts_from_saved_weights(tiny_data, tmp_path):
    from napari_linblur.cli.main import main

    common = ["train", "ae", "--data", str(tiny_data), "--model-config", json.dumps(TINY), "--batch-size", "2",
              "--crop", "32", "--no-progress", "--device", "cpu", "--threads", "1"]
    assert main([*common, "--steps", "3", "--seed", "1", "--out", str(tmp_path / "a")]) == 0
    src = tmp_path / "a" / "model.safetensors"
    task = AETask(load_fields(tiny_data, "w1"), TINY, batch_size=2, crop=32, seed=7, init=str(src))
    sa, sb = registry.load_model(src, device="cpu").state_dict(), task.build_model().state_dict()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)
    assert main([*common, "--steps", "2", "--seed", "7", "--init", str(src), "--out", str(tmp_path / "b")]) == 0
    card = registry.load_model(tmp_path / "b" / "model.safetensors", device="cpu").card
    src_s = registry.read_card(src)["training"]["seconds"]
    assert card["init"] == {
        "from": str(src), "sha256": registry.sha256_file(src), "init": None,
        "command": registry.read_card(src)["training"]["command"], "steps": 3, "seconds": src_s,
        "total": {"seconds": src_s, "steps": 3, "legs": 1}}
    assert card["training_total"] == {"seconds": card["training"]["seconds"] + src_s, "steps": 5, "legs": 2}
    # the architecture comes from the init model: a custom-config model continues without repeating --model-config
    cmd = [a for a in common if a not in ("--model-config", json.dumps(TINY))]
    assert main([*cmd, "--steps", "1", "--init", str(src), "--out", str(tmp_path / "c")]) == 0
    assert registry.read_card(tmp_path / "c" / "model.safetensors")["config"] == registry.read_card(src)["config"]


def test_train_cli_init_refuses_a_contradicting_config(tiny_data, tmp_path, capsys):
    """--config / --model-config that contradict the --init model, or an --init of another task, are refused before
    anything is written, naming what differs."""
    from napari_linblur.cli.main import main

    common = ["train", "ae", "--data", str(tiny_data), "--batch-size", "2", "--crop", "32", "--no-progress",
              "--device", "cpu", "--threads", "1", "--steps", "1"]
    assert main([*common, "--model-config", json.dumps(TINY), "--out", str(tmp_path / "a")]) == 0
    src = str(tmp_path / "a" / "model.safetensors")
    assert main([*common, "--init", src, "--config", "default", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "contradict --init" in err and "channels" in err and "leave --config and --model-config out" in err
    assert not (tmp_path / "b").exists()
    assert main([*common, "--init", "defocus-default", "--out", str(tmp_path / "c")]) == 2
    assert "not a LinearLatentAE" in capsys.readouterr().err and not (tmp_path / "c").exists()
    # the same configuration given explicitly is accepted
    assert main([*common, "--init", src, "--model-config", json.dumps(TINY), "--out", str(tmp_path / "d")]) == 0


def test_joint_channels_share_the_split_and_train_from_the_cli(tiny_data, tmp_path):
    """--channel w1+w2: one model on both channels; a field's channels stay in one split."""
    from napari_linblur.cli.main import main

    w1, w2 = load_fields(tiny_data, "w1"), load_fields(tiny_data, "w2")
    solo = AETask(w1, TINY, batch_size=2, crop=32, seed=1)
    joint = AETask(w1, TINY, batch_size=2, crop=32, seed=1, more_channels=[w2])
    assert len(joint.train_fields) == 2 * len(solo.train_fields) and len(joint.val_fields) == 2 * len(solo.val_fields)
    names = [f.name for f in joint.train_fields]
    assert len(set(names)) == len(names) and {n.split("/")[0] for n in names} == {f.name for f in solo.train_fields}
    assert np.array_equal(joint.train_fields[-1].planes, w2.fields[int(joint.split["train"][-1])].planes)
    assert joint.card()["data"]["channel"] == "w1+w2" and solo.card()["data"]["channel"] == "w1"
    assert torch.equal(joint.batch(4)["x"], joint.batch(4)["x"])
    with pytest.raises(ValueError, match="every field"):
        AETask(w1, TINY, batch_size=2, crop=32, more_channels=[load_fields(tiny_data, "w2", fields=[0, 1])])
    assert main(["train", "ae", "--data", str(tiny_data), "--channel", "w1+w2", "--model-config", json.dumps(TINY),
                 "--batch-size", "2", "--crop", "32", "--steps", "2", "--no-progress", "--device", "cpu",
                 "--threads", "1", "--out", str(tmp_path / "joint")]) == 0
    assert registry.read_card(tmp_path / "joint" / "model.safetensors")["data"]["channel"] == "w1+w2"


def test_train_cli_errors(tmp_path, tiny_data):
    from napari_linblur.cli.main import main

    assert main(["train", "ae", "--data", str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "r")]) == 2
    assert main(["train", "ae", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--channel", "w9"]) == 2
    assert main(["train", "ae", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--model-config", "[1]"]) == 2
    # a misspelled key is refused, not recorded beside the default it meant to change
    assert main(["train", "ae", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--model-config",
                 '{"latent_channel": 4}']) == 2
    assert not Path(tmp_path / "r" / "model.safetensors").exists()


def test_bbbc006_layout_loads_and_trains(tmp_path):
    import tifffile

    from napari_linblur.cli.main import main

    root = tmp_path / "BBBC006"
    root.mkdir()
    uuid = "2667264a-6432-4f7e-bf58-625a1319a1c9"
    rng = np.random.default_rng(0)
    wells = [("a01", 1), ("a01", 2), ("b02", 1)]
    for z in range(8, 17):  # planes 8..16 (16 in focus)
        for well, s in wells:
            img = (100 + rng.poisson(20 + z, (40, 48))).astype(np.uint16)
            tifffile.imwrite(root / f"{z:02d}_mcf-z-stacks-03212011_{well}_s{s}_w1{uuid}.tif", img)
    data = load_fields(root, "w1")
    assert len(data.fields) == 3 and data.kind == "bbbc006"
    f = data.fields[0]
    assert f.plane_index == [16, 14, 12, 10, 8]  # the paper's even planes, in focus first
    np.testing.assert_allclose(f.defocus_um, np.arange(5) * 4.0)
    assert main(["train", "ae", "--data", str(root), "--channel", "w1", "--model-config", json.dumps(TINY),
                 "--steps", "3", "--batch-size", "2", "--crop", "32", "--no-progress", "--device", "cpu",
                 "--out", str(tmp_path / "run")]) == 0
    card = registry.read_card(tmp_path / "run" / "model.safetensors")
    assert card["data"]["kind"] == "bbbc006" and card["data"]["planes"][0] == 16


def test_a_stack_without_z_spacing_says_its_defocus_is_in_planes(tmp_path):
    """A stack that records no Z spacing: the card's defocus_um held plane counts as µm. It now says the unit is
    planes (with a warning), and a calibrated stack keeps µm."""
    from napari_linblur.io.omezarr import write_ome_zarr
    from napari_linblur.training.ae import load_fields

    rng = np.random.default_rng(0)
    stack = (100 + rng.poisson(50, (3, 9, 40, 48))).astype(np.uint16)
    stack[:, 0] += (rng.random((3, 40, 48)) * 400).astype(np.uint16)  # a sharp plane 0
    plain = write_ome_zarr(tmp_path / "plain.zarr", stack, axes="pzyx", units=None)  # no spacing, no unit
    with pytest.warns(UserWarning, match="no Z spacing in a length unit: defocus is counted in planes"):
        data = load_fields(plain, None)
    assert data.meta["defocus_unit"] == "planes"
    d = np.asarray(data.fields[0].defocus_um)
    np.testing.assert_array_equal(d, np.round(d))  # whole planes from the sharpest
    from napari_linblur.training.ae import AETask

    assert AETask(data, TINY, batch_size=2, crop=32).card()["data"]["defocus_unit"] == "planes"
    cal = write_ome_zarr(tmp_path / "cal.zarr", stack, axes="pzyx", scale=(1.0, 4.0, 0.65, 0.65),
                         units="micrometer")
    got = load_fields(cal, None)
    assert got.meta["defocus_unit"] == "um" and max(got.fields[0].defocus_um) % 4.0 == 0


@pytest.mark.parametrize("bad, error, says", [
    ({"batch_size": "x"}, TypeError, "batch_size (--batch-size) must be an int >= 1, got 'x'"),
    ({"batch_size": 8.0}, TypeError, "batch_size (--batch-size) must be an int >= 1"),
    ({"batch_size": 0}, ValueError, "batch_size (--batch-size) must be an int >= 1"),
    ({"crop": "x"}, TypeError, "crop (--crop) must be an int"),
    ({"crop": 50}, ValueError, "crop (--crop) must be a positive multiple of 4"),
])
def test_ae_task_options_are_named_in_errors(tiny_data, bad, error, says):
    """A script's bad batch size or crop names the option (it used to be Python's bare int() error)."""
    with pytest.raises(error) as err:
        AETask(load_fields(tiny_data, "w1"), "default", **bad)
    assert says in str(err.value)
