"""`linblur evaluate ae` (tables + baselines on the same planes) and `linblur synthesize` on a tiny dataset."""

import json
import warnings

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from napari_linblur.cli.main import main
from napari_linblur.models import registry
from napari_linblur.models.autoencoder import LinearLatentAE

TINY = {"arch": "resnet", "channels": [8, 16], "latent_channels": 4, "norm": "none", "output": "linear"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from napari_linblur.synth.dataset import write_synthetic_dataset
    from napari_linblur.synth.recipes import get_recipe

    root = tmp_path_factory.mktemp("aeeval")
    data = root / "d.zarr"
    write_synthetic_dataset(data, get_recipe("bbbc006-like", shape=(48, 64), keep_even=True), fields=5, seed=1,
                            progress=False)
    torch.manual_seed(0)
    m = LinearLatentAE(**TINY)
    model = root / "run" / "model.safetensors"
    registry.save_model(m, model, {"architecture": "LinearLatentAE", "task": "ae", "config": m.config})
    return data, model


def test_evaluate_writes_tables_with_baselines(setup, tmp_path, capsys):
    data, model = setup
    assert main(["evaluate", "ae", "--data", str(data), "--model", str(model), "--out", str(tmp_path / "ev"),
                 "--split", "all", "--max-fields", "2", "--no-progress", "--threads", "1", "--tta", "2"]) == 0
    printed = capsys.readouterr().out
    assert "self-ensemble ×2" in printed
    assert "LDS" in printed and "APD" in printed and "pixel blend" in printed and "Wiener" in printed
    res = json.loads((tmp_path / "ev" / "evaluate_ae.json").read_text())
    m = res["models"]["run"]
    for key in ("lds", "apd", "interp_vs_real", "interp_vs_recon", "extrap_vs_real", "extrap_vs_recon",
                "extrap_tta_vs_real"):
        assert np.isfinite(m[key]), key
    assert m["tta"] == 2 and set(m["extrap_tta_by_k"]) == set(m["extrap_by_k"])
    assert set(res["baselines"]["wiener_by_k"]) == set(m["extrap_by_k"])
    assert m["non_finite_left_out"] == 0 and res["baselines"]["non_finite_left_out"] == 0
    assert -1 <= m["lds"] <= 1 and m["apd"] >= 0
    assert res["command"].startswith("linblur evaluate ae ") and "--tta 2" in res["command"]
    assert "--split all" in res["command"] and "--no-progress" in res["command"]
    b = res["baselines"]
    # baselines measured on the same planes: Wiener with the true PSF beats the blurry input it deconvolves
    assert b["wiener_vs_real"] > b["blurry_vs_real"]
    assert res["data"]["planes"] == [16, 14, 12, 10, 8, 6, 4, 2, 0] and len(res["data"]["fields"]) == 2
    md = (tmp_path / "ev" / "evaluate_ae.md").read_text()
    assert md.startswith("Data:")
    # SSIM of the same planes: bounded, and in its own table (it need not rank as the PSNR does: Wiener at its
    # PSNR-best balance amplifies noise that SSIM weighs more)
    for key in ("interp_ssim", "extrap_ssim", "extrap_tta_ssim", "auto_ssim"):
        assert -1 <= m[key] <= 1, key
    assert all(-1 <= b[k] <= 1 for k in ("blend_ssim", "blurry_ssim", "wiener_ssim"))
    assert "**SSIM (same planes, data_range = 1)**" in md and f"{m['extrap_ssim']:.4f}" in md


def test_ssim_is_of_the_planes_the_psnr_scores(setup):
    """The SSIM entries score the very planes the PSNR entries do (a perfect blend scores 1)."""
    from napari_linblur.evaluation.ae import evaluate_field_baselines, evaluate_field_model
    from napari_linblur.metrics.image import psnr, ssim

    _, model_path = setup
    model = registry.load_model(model_path, device="cpu")
    rng = np.random.default_rng(1)
    sharp = gaussian_filter(rng.random((48, 64)), 1.0)
    planes = np.stack([gaussian_filter(sharp, s) for s in (0.01, 1, 2, 3, 4)]).astype(np.float32)
    d = np.array([0.0, 1, 2, 3, 4])
    base = evaluate_field_baselines(planes, d)
    assert base["blurry_ssim"] == [pytest.approx(ssim(planes[0], planes[k], data_range=1.0)) for k in (1, 2)]
    assert base["blurry_vs_real"] == [pytest.approx(psnr(planes[0], planes[k], data_range=1.0)) for k in (1, 2)]
    lin = np.stack([np.full((48, 64), v, np.float32) for v in (0.0, 0.25, 0.5, 0.75, 1.0)])
    assert evaluate_field_baselines(lin, d)["blend_ssim"] == [pytest.approx(1.0)] * 4  # blends are exact here
    res = evaluate_field_model(model, planes, d, auto=False)
    assert len(res["extrap_ssim"]) == len(res["extrap_vs_real"]) == 2
    assert len(res["interp_ssim"]) == len(res["interp_vs_real"]) == 4


def test_evaluation_scores_the_pair_operations_as_a_user_calls_them(setup):
    """evaluate ae scores synthesis and pair deblurring through the pair's own normalization, as synthesize_blur
    and deblur_pair run; a stack-wide normalization (what it did before) gives other numbers."""
    import napari_linblur as nl
    from napari_linblur.evaluation.ae import _as_called
    from napari_linblur.inference.latent_ops import combine_normalized
    from napari_linblur.inference.normalize import fit_normalization

    _, model_path = setup
    model = registry.load_model(model_path, device="cpu")
    rng = np.random.default_rng(0)
    raw = [gaussian_filter(rng.random((48, 64)), s) * 3000 + 200 for s in (1.0, 2.0, 3.5)]
    field = fit_normalization(*raw)  # the evaluation's stack-wide normalization
    b, c = field.apply(raw[1]), field.apply(raw[2])
    got = field.invert(_as_called(model, b, c, 1 / 0.5, -1.0))
    want = nl.deblur_pair(raw[1], raw[2], 0.5, model=model, device="cpu")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-2)
    got = field.invert(_as_called(model, field.apply(raw[0]), c, 0.3, 0.7))
    np.testing.assert_allclose(got, nl.synthesize_blur(raw[0], raw[2], 0.3, model=model, device="cpu"), rtol=1e-4,
                               atol=1e-2)
    stackwide = field.invert(combine_normalized(model, b, c, 2.0, -1.0))
    assert np.abs(stackwide - want).max() > 1.0  # the network is not scale-invariant: the old path differed


def test_evaluate_rejects_non_ae_model(setup, tmp_path):
    data, _ = setup
    m = LinearLatentAE(**TINY)
    other = tmp_path / "x.safetensors"
    registry.save_model(m, other, {"architecture": "LinearLatentAE", "task": "defocus", "config": m.config})
    assert main(["evaluate", "ae", "--data", str(data), "--model", str(other), "--out", str(tmp_path / "e"),
                 "--no-progress"]) == 2


def test_synthesize_cli_writes_ome_zarr(setup, tmp_path):
    from napari_linblur.io.readers import open_zstack

    data, model = setup
    out = tmp_path / "s.zarr"
    src = data / "field_000"
    assert main(["synthesize", str(src), str(out), "--channel", "w1", "--sharp", "0", "--blurry", "4",
                 "--alpha", "0.75", "0.25", "--model", str(model), "--device", "cpu"]) == 0
    arr = open_zstack(out)
    assert arr.shape[-3:] == (2, 48, 64) and arr.dtype == np.float32
    import napari_linblur as nl

    stack = np.asarray(open_zstack(src, channel="w1"))
    ref = nl.synthesize_blur(stack[0], stack[4], 0.25, model=str(model), device="cpu")
    np.testing.assert_allclose(np.asarray(arr).reshape(2, 48, 64)[1], ref, rtol=1e-5, atol=1e-3)
    assert main(["synthesize", str(src), str(tmp_path / "t.zarr"), "--channel", "w1", "--sharp", "0",
                 "--blurry", "99", "--model", str(model)]) == 2
    # the output keeps the input's pixel size and its channel; -1 is the last plane, also for --positions
    from napari_linblur.io.readers import open_zstack_with_metadata

    _, src_meta = open_zstack_with_metadata(src, channel="w1")
    _, meta = open_zstack_with_metadata(out)
    assert meta.scale[-2:] == src_meta.scale[-2:] and meta.units[-2:] == src_meta.units[-2:]
    assert meta.channel_names == ["w1"]
    nz = stack.shape[0]
    neg = tmp_path / "neg.zarr"
    assert main(["synthesize", str(src), str(neg), "--channel", "w1", "--sharp", "0", "--blurry", "-1",
                 "--positions", str((nz - 1) / 2), "--model", str(model), "--device", "cpu"]) == 0
    import zarr

    attrs = zarr.open_group(str(neg), mode="r").attrs["linblur"]
    assert attrs["blurry_plane"] == nz - 1 and attrs["alphas"] == [pytest.approx(0.5)]
    assert main(["synthesize", str(src), str(tmp_path / "same.zarr"), "--channel", "w1", "--sharp", "2",
                 "--blurry", str(2 - nz), "--model", str(model)]) == 2


def test_ship_model_takes_the_chosen_models_evaluation(setup, tmp_path, monkeypatch):
    """ship_model copies a run into the weights folder with the evaluation column of that run (``label``)."""
    from napari_linblur.training.ae import ship_model

    data, model = setup
    other = tmp_path / "other" / "model.safetensors"
    registry.save_model(LinearLatentAE(**TINY), other, {"architecture": "LinearLatentAE", "task": "ae",
                                                        "config": TINY})
    ev = tmp_path / "ev"
    assert main(["evaluate", "ae", "--data", str(data), "--model", str(other), "--model", str(model), "--out",
                 str(ev), "--split", "all", "--max-fields", "1", "--no-progress", "--threads", "1"]) == 0
    res = json.loads((ev / "evaluate_ae.json").read_text())
    assert list(res["models"]) == ["other", "run"]
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path / "weights")
    (tmp_path / "weights").mkdir()
    with pytest.raises(ValueError, match="nope"):
        ship_model(model.parent, ev / "evaluate_ae.json", name="ae-x", label="nope")
    path = ship_model(model.parent, ev / "evaluate_ae.json", name="ae-x", label="run")
    card = registry.read_card(path)
    assert card["evaluation"]["model"] == res["models"]["run"]
    sidecar = json.loads(path.with_suffix(".json").read_text())  # the card again, with the file's hash
    assert sidecar["sha256"] == registry.sha256_file(path)
    assert "previous" not in card and card["training_total"]["legs"] == 1
    # shipping over it records the model it replaces; a fine-tuned run sums its legs' training
    first = sidecar["sha256"]
    registry.save_model(LinearLatentAE(**TINY), tmp_path / "ft" / "model.safetensors", {
        "architecture": "LinearLatentAE", "task": "ae", "config": TINY, "training": {"seconds": 30.0, "steps": 3},
        "init": {"from": "x", "seconds": 100.0, "steps": 10, "init": {"training_seconds": 5.0, "steps": 1}}})
    again = registry.read_card(ship_model(tmp_path / "ft", ev / "evaluate_ae.json", name="ae-x", label="run"))
    assert again["previous"]["sha256"] == first and again["previous"]["evaluation"] == res["models"]["run"]
    assert again["training_total"] == {"seconds": 135.0, "steps": 14, "legs": 3, "amp": None}


def test_fields_of_a_bbbc006_folder_are_counted_per_channel(tmp_path):
    """evaluate ae draws its split from count_fields: a BBBC006 folder's channels are not extra fields (the
    split must be the one training drew from load_fields' fields)."""
    import tifffile

    from napari_linblur.training.ae import count_fields, load_fields

    uuid = "2667264a-6432-4f7e-bf58-625a1319a1c9"
    rng = np.random.default_rng(0)
    for z in range(3):
        for w in (1, 2):
            for well, s in (("a01", 1), ("k06", 2), ("b03", 1)):
                tifffile.imwrite(tmp_path / f"{z:02d}_mcf-z-stacks-03212011_{well}_s{s}_w{w}{uuid}.tif",
                                 rng.integers(100, 900, (24, 32)).astype(np.uint16))
    assert count_fields(tmp_path) == 3 == load_fields(tmp_path, "w1", planes="all").meta["n_fields"]


def test_models_in_one_folder_get_their_own_columns():
    from napari_linblur.evaluation.ae import _model_labels

    assert _model_labels(["runs/a/model.safetensors", "ae-default"]) == ["a", "ae-default"]
    assert _model_labels(["mm/a.safetensors", "mm/b.safetensors"]) == ["a", "b"]
    assert _model_labels(["x/run/model.safetensors", "y/run/model.safetensors"]) == [
        "x/run/model.safetensors", "y/run/model.safetensors"]
    assert _model_labels(["ae-default", "ae-default"]) == ["ae-default #1", "ae-default #2"]


@pytest.mark.parametrize("bad, says", [(["--max-fields", "0"], "max_fields"), (["--crop", "2"], "crop")])
def test_evaluate_ae_rejects_impossible_sizes(setup, tmp_path, bad, says, capsys):
    data, model = setup
    assert main(["evaluate", "ae", "--data", str(data), "--model", str(model), "--out", str(tmp_path / "ev"),
                 "--split", "all", "--no-progress", "--threads", "1", *bad]) == 2
    assert says in capsys.readouterr().err and not (tmp_path / "ev").exists()


def test_train_ae_refuses_no_epochs(setup, tmp_path, capsys):
    data, _ = setup
    assert main(["train", "ae", "--data", str(data), "--epochs", "0", "--out", str(tmp_path / "run")]) == 2
    assert "--epochs must be positive" in capsys.readouterr().err and not (tmp_path / "run").exists()


def _listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("inside", ["", "run", "field_000/run"])
def test_train_and_evaluate_ae_refuse_an_out_in_their_own_input(setup, capsys, monkeypatch, inside):
    """--out the --data store itself or a folder inside it would put checkpoints, logs and reports into the input
    dataset: refused before any work, as the apply commands refuse writing into their input."""
    import napari_linblur.evaluation.ae as evaluation
    import napari_linblur.training.ae as training

    data, model = setup
    before = _listing(data)
    monkeypatch.setattr(training, "load_fields", lambda *a, **k: pytest.fail("loaded the data before the check"))
    monkeypatch.setattr(evaluation, "evaluate_ae", lambda *a, **k: pytest.fail("evaluated before the check"))
    out = str(data / inside) if inside else str(data)
    assert main(["train", "ae", "--data", str(data), "--out", out, "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}" in err and "its own input" in err and str(data) in err, err
    assert main(["evaluate", "ae", "--data", str(data), "--model", str(model), "--out", out]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}" in err and "its own input" in err and str(data) in err, err
    assert _listing(data) == before


def test_train_and_evaluate_ae_check_the_split_seed(setup, tmp_path, capsys, monkeypatch):
    import napari_linblur.evaluation.ae as evaluation
    import napari_linblur.training.ae as training

    data, model = setup
    monkeypatch.setattr(training, "load_fields", lambda *a, **k: pytest.fail("loaded the data before the check"))
    monkeypatch.setattr(evaluation, "evaluate_ae", lambda *a, **k: pytest.fail("evaluated before the check"))
    assert main(["train", "ae", "--data", str(data), "--out", str(tmp_path / "run"), "--split-seed", "-1"]) == 2
    assert "--split-seed must be" in capsys.readouterr().err
    assert main(["evaluate", "ae", "--data", str(data), "--model", str(model), "--out", str(tmp_path / "ev"),
                 "--split-seed", "-1"]) == 2
    assert "--split-seed must be" in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def split_models(setup, tmp_path_factory):
    """Two tiny models trained on the 5 fields of ``setup`` with --split-seed 0 and 1 (one step each)."""
    data, _ = setup
    root = tmp_path_factory.mktemp("splits")
    for seed in (0, 1):
        assert main(["train", "ae", "--data", str(data), "--split-seed", str(seed), "--model-config", json.dumps(TINY),
                     "--steps", "1", "--batch-size", "2", "--crop", "32", "--no-progress", "--device", "cpu",
                     "--threads", "1", "--out", str(root / f"s{seed}")]) == 0
    return root / "s0" / "model.safetensors", root / "s1" / "model.safetensors"


def _eval(data, models, out, *more):
    words = ["evaluate", "ae", "--data", str(data), "--out", str(out), "--no-progress", "--threads", "1",
             "--no-auto-alpha"]
    for m in models:
        words += ["--model", str(m)]
    return main([*words, *more])


def _names(indices):
    return [f"field_{int(i):03d}" for i in indices]


def test_evaluate_ae_scores_the_held_out_fields_of_the_models_own_split(setup, split_models, tmp_path, capsys):
    """Without --split-seed, evaluate ae takes the split the model card records (not seed 0): the 'test' fields
    are never fields the model trained on, and the recorded command names the seed it used."""
    import shlex

    data, _ = setup
    s0, s1 = split_models
    card = registry.read_card(s1)["data"]
    assert card["split_seed"] == 1
    # the case that matters: seed 0's test field is one seed 1 trained on
    assert set(card["split"]["train"]) & {int(i) for i in registry.read_card(s0)["data"]["split"]["test"]}
    for split in ("test", "val"):
        assert _eval(data, [s1], tmp_path / split, "--split", split) == 0
        res = json.loads((tmp_path / split / "evaluate_ae.json").read_text())
        assert res["data"]["split_seed"] == 1 and res["data"]["warnings"] == []
        assert res["data"]["fields"] == _names(card["split"][split])
        assert not set(res["data"]["fields"]) & set(_names(card["split"]["train"]))
        assert "--split-seed 1" in res["command"]
    assert "split test of seed 1" in (tmp_path / "test" / "evaluate_ae.md").read_text()
    # the recorded command reproduces the evaluation (the seed is written out, so it no longer depends on the card)
    words = shlex.split(res["command"])
    words[words.index("--out") + 1] = str(tmp_path / "again")
    assert main(words[1:]) == 0
    assert json.loads((tmp_path / "again" / "evaluate_ae.json").read_text())["data"]["fields"] == res["data"]["fields"]
    # the explicit seed that agrees with the card is accepted; a model without a recorded split keeps seed 0
    assert _eval(data, [s1], tmp_path / "explicit", "--split-seed", "1") == 0
    from napari_linblur.evaluation.ae import evaluate_ae

    old = evaluate_ae(str(data), [str(setup[1])], progress=False, auto=False, max_fields=1)
    assert old["data"]["split_seed"] == 0 and old["data"]["fields"] == _names(
        registry.read_card(s0)["data"]["split"]["test"])[:1]


def test_evaluate_ae_refuses_a_split_other_than_the_models(setup, split_models, tmp_path, capsys):
    """An explicit --split-seed other than the card's, or models trained on different splits of the dataset, would
    score training fields as held-out ones: refused before any work, saying what differs and how to choose."""
    import shutil

    data, _ = setup
    s0, s1 = split_models
    capsys.readouterr()
    assert _eval(data, [s1], tmp_path / "a", "--split-seed", "0") == 2
    err = capsys.readouterr().err
    assert "--split-seed 0 is not the field split" in err and "--split-seed 1 in its card" in err, err
    assert "Leave --split-seed out" in err and "--split all" in err
    assert _eval(data, [s0, s1], tmp_path / "b") == 2
    err = capsys.readouterr().err
    assert "different field splits" in err and f"--model {s0}: --split-seed 0" in err, err
    assert f"--model {s1}: --split-seed 1" in err and "--split all" in err
    assert _eval(data, [s0, s1], tmp_path / "c", "--split-seed", "1") == 2
    assert f"--model {s0} was trained on (--split-seed 0" in capsys.readouterr().err
    # a copy of the dataset elsewhere is the same dataset (same recipe and seed): still refused
    copy = tmp_path / "copy.zarr"
    shutil.copytree(data, copy)
    assert _eval(copy, [s1], tmp_path / "d", "--split-seed", "0") == 2
    assert "--split-seed 1 in its card" in capsys.readouterr().err
    assert not any((tmp_path / x).exists() for x in "abcd")
    # a separate test dataset is always allowed: --split all (it warns when it is the models' training dataset)
    assert _eval(data, [s0, s1], tmp_path / "all", "--split", "all", "--max-fields", "1") == 0
    err = capsys.readouterr().err
    assert "warning: --split all scores every field" in err and "training fields" in err, err
    res = json.loads((tmp_path / "all" / "evaluate_ae.json").read_text())
    assert res["data"]["split_seed"] is None and "--split-seed" not in res["command"]
    assert res["data"]["warnings"] and "Warning: --split all" in (tmp_path / "all" / "evaluate_ae.md").read_text()
    # another channel of the training dataset: a warning, and still the card's split
    assert _eval(data, [s1], tmp_path / "w2", "--channel", "w2") == 0
    err = capsys.readouterr().err
    assert "trained on channel w1 of this dataset, --channel is w2" in err, err
    res = json.loads((tmp_path / "w2" / "evaluate_ae.json").read_text())
    assert res["data"]["split_seed"] == 1 and res["data"]["fields"] == _names(registry.read_card(s1)["data"]["split"]
                                                                               ["test"])


def test_evaluate_ae_never_scores_fields_a_card_records_as_trained(setup, split_models, tmp_path, capsys):
    """The recorded 'train' fields are checked, not only the seed: a card whose split was drawn otherwise (an older
    split function) is refused when the test fields of its seed are among them."""
    data, _ = setup
    card = registry.read_card(split_models[0])
    assert card["data"]["split_seed"] == 0 and card["data"]["split"]["test"] == [4]
    card["data"]["split"] = {"train": [1, 2, 4], "val": [0], "test": [3]}
    other = tmp_path / "old" / "model.safetensors"
    registry.save_model(LinearLatentAE(**TINY), other, card)
    assert _eval(data, [other], tmp_path / "ev") == 2
    err = capsys.readouterr().err
    assert "would score fields [4], which --model" in err and "the 'train' split recorded in its card" in err, err
    assert not (tmp_path / "ev").exists()
    assert _eval(data, [other], tmp_path / "ev", "--split", "all", "--max-fields", "1") == 0


def test_synthesize_cli_shows_progress_on_a_terminal(setup, tmp_path, monkeypatch, capsys):
    from napari_linblur import batch

    data, model = setup
    args = [str(data / "field_000"), "--channel", "w1", "--sharp", "0", "--blurry", "4", "--model", str(model),
            "--device", "cpu"]
    monkeypatch.setattr(batch, "_stderr_is_terminal", lambda: True)
    assert main(["synthesize", args[0], str(tmp_path / "a.zarr"), *args[1:]]) == 0
    assert "synthesize: 100%" in capsys.readouterr().err
    assert main(["synthesize", args[0], str(tmp_path / "b.zarr"), *args[1:], "--no-progress"]) == 0
    assert "synthesize:" not in capsys.readouterr().err


def test_means_count_and_warn_about_the_values_they_leave_out():
    """An inf PSNR (a result identical to its reference) or a NaN cannot enter a mean; it is left out, counted in the
    summary and warned about, never dropped silently."""
    from napari_linblur.evaluation.ae import _count_non_finite, _finite_mean

    tally: list[int] = []
    assert _finite_mean([30.0, float("inf"), 32.0, float("nan")], tally=tally) == 31.0
    assert np.isnan(_finite_mean([float("inf")], tally=tally)) and tally == [2, 1]
    summary: dict = {}
    with pytest.warns(UserWarning, match=r"m: 3 non-finite value\(s\).*left out of the means"):
        _count_non_finite(summary, "m", tally)
    assert summary["non_finite_left_out"] == 3 and tally == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _count_non_finite(summary, "m", [0, 0])
    assert summary["non_finite_left_out"] == 0
