"""Synthesis: phantoms, recipes, through-focus stacks, OME-Zarr datasets and ``linblur synth``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_linblur.optics import OpticalSetup, fft_convolve
from napari_linblur.synth import (
    Recipe,
    cell_phantom,
    content_from_image,
    get_recipe,
    list_recipes,
    psfs_for,
    synthesize_field,
    through_focus_stack,
    write_synthetic_dataset,
)

try:
    from napari_linblur.metrics.focus import variance_of_laplacian
except ImportError:  # pragma: no cover - metrics not built yet
    from scipy import ndimage

    def variance_of_laplacian(img):
        return float(ndimage.laplace(np.asarray(img, np.float64))[1:-1, 1:-1].var())


SMALL = (96, 128)


@pytest.fixture(scope="module")
def phantom():
    return cell_phantom(SMALL, n_cells=8, rng=0)


# ---------------------------------------------------------------- phantoms
def test_cell_phantom_two_channels_seeded(phantom):
    assert phantom.shape == (2,) + SMALL and phantom.dtype == np.float32
    assert phantom.min() >= 0 and phantom[0].max() > 0.5 and phantom[1].max() > 0.1
    assert np.array_equal(phantom, cell_phantom(SMALL, n_cells=8, rng=0))
    assert not np.array_equal(phantom, cell_phantom(SMALL, n_cells=8, rng=1))
    # nuclei are compact: most of the frame is background in w1, cell bodies cover more in w2
    assert (phantom[0] > 0.1).mean() < (phantom[1] > 0.1).mean()


def test_content_from_image():
    img = np.random.default_rng(0).integers(0, 4000, (20, 30, 3)).astype(np.uint16)
    c = content_from_image(img, channel_axis=-1)
    assert c.shape == (3, 20, 30) and c.dtype == np.float32 and c.min() >= 0
    assert content_from_image(img[..., 0]).shape == (1, 20, 30)
    with pytest.raises(ValueError, match="image"):
        content_from_image(np.ones(5))


# ---------------------------------------------------------------- recipes
def test_recipes_roundtrip_and_bbbc006_planes():
    assert set(list_recipes()) >= {"bbbc006-like", "training"}
    r = get_recipe("bbbc006-like")
    assert r.shape == (520, 696) and r.optics.na == 0.45 and r.optics.pixel_um == 0.65
    assert [c.wavelength_um for c in r.channels] == [0.46, 0.52]
    assert r.plane_defocus_um[0] == 32.0 and r.plane_defocus_um[16] == 0.0 and len(r.planes) == 17
    even = r.replace(keep_even=True)
    assert even.planes == tuple(range(0, 17, 2)) and even.z_step_um == 4.0
    for name in list_recipes():
        rr = get_recipe(name)
        d = json.loads(json.dumps(rr.to_dict()))
        assert Recipe.from_dict(d) == rr
    with pytest.raises(ValueError, match="recipe"):
        get_recipe("nope")


def test_training_recipe_randomizes_within_ranges():
    t = get_recipe("training")
    seen = set()
    for s in range(12):
        r = t.realize(s)
        o = r.optics
        assert 0.3 <= o.na <= 0.95 and o.na < o.ni and 0.1 <= o.pixel_um <= 1.0
        assert all(0.45 <= c.wavelength_um <= 0.65 for c in r.channels)
        assert r.plane_defocus_um[-1] == 0.0 and np.all(np.diff(r.plane_defocus_um) < 0)
        assert r == t.realize(s)  # deterministic in the seed
        seen.add(o.model)
    assert len(seen) >= 2
    with pytest.raises(ValueError, match="realize"):
        through_focus_stack(np.ones((16, 16)), t)


# ---------------------------------------------------------------- through-focus stacks
def test_clean_stack_focus_falls_monotonically_with_defocus(phantom):
    r = get_recipe("bbbc006-like", shape=SMALL)
    clean = through_focus_stack(phantom, r, clean=True)
    assert clean.shape == (2, 17) + SMALL and clean.dtype == np.float32
    for c in range(2):
        f = [
            variance_of_laplacian(clean[c, z]) for z in range(17)
        ]  # plane 0 = 32 µm ... plane 16 = focus
        assert np.all(np.diff(f) > 0), f
    # flux is conserved by the normalized PSFs (reflect boundary): plane means stay equal
    means = clean[0].mean(axis=(1, 2))
    assert np.allclose(means, means[-1], rtol=2e-3)


def test_noisy_stack_uint16_offset_and_focus(phantom):
    r = get_recipe("bbbc006-like", shape=SMALL)
    st = through_focus_stack(phantom, r, rng=0)
    assert st.dtype == np.uint16 and st.shape == (2, 17) + SMALL
    assert np.array_equal(st, through_focus_stack(phantom, r, rng=0))
    # background sits near the camera offset (100 ADU), as in real 16-bit data
    assert 90 < np.percentile(st[0, -1], 5) < 130
    clean = through_focus_stack(phantom, r, clean=True)
    assert abs(float(st.mean()) - float(clean.mean())) < 1.0
    # with bright fluorescence the measured focus curve is monotone too and peaks in focus
    bright = through_focus_stack(phantom, r, rng=0, photons=50_000)
    f = [variance_of_laplacian(bright[0, z].astype(np.float64)) for z in range(17)]
    assert int(np.argmax(f)) == 16 and np.all(np.diff(f[4:]) > 0), f


def test_stack_planes_are_exact_psf_convolutions():
    img = np.random.default_rng(1).random((40, 48))
    setup = OpticalSetup(model="born_wolf", na=0.45, wavelength_um=0.52, pixel_um=0.65)
    dz = [10.0, 4.0, 0.0]
    clean = through_focus_stack(img, setup, dz, clean=True, photons=1.0, gain=1.0, offset=0.0)
    assert clean.shape == (3, 40, 48)
    for z, p in zip(range(3), psfs_for(setup, dz)):
        assert np.allclose(clean[z], np.clip(fft_convolve(img, p), 0, None), atol=1e-5)
    assert psfs_for(setup, dz)[0] is psfs_for(setup, dz)[0]  # cached


def test_stack_bad_inputs():
    s = OpticalSetup(model="gaussian")
    with pytest.raises(ValueError, match="content"):
        through_focus_stack(np.ones((2, 2, 8, 8)), s, [0.0])
    with pytest.raises(ValueError, match="content"):
        through_focus_stack(-np.ones((8, 8)), s, [0.0])
    with pytest.raises(ValueError, match="content"):
        through_focus_stack(np.full((8, 8), np.nan), s, [0.0])
    with pytest.raises(ValueError, match="defocus_um"):
        through_focus_stack(np.ones((8, 8)), s)
    with pytest.raises(ValueError, match="defocus_um"):
        through_focus_stack(np.ones((8, 8)), s, [np.nan])


# ---------------------------------------------------------------- datasets and CLI
def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_synth_cli_byte_identical_and_readable(tmp_path):
    from napari_linblur.cli.main import main

    args = [
        "--fields",
        "2",
        "--seed",
        "5",
        "--planes",
        "even",
        "--shape",
        "48",
        "64",
        "--no-progress",
        "-q",
    ]
    assert main(["synth", str(tmp_path / "a.zarr"), *args]) == 0
    assert main(["synth", str(tmp_path / "b.zarr"), *args]) == 0
    a, b = _tree_bytes(tmp_path / "a.zarr"), _tree_bytes(tmp_path / "b.zarr")
    assert a.keys() == b.keys() and len(a) > 10
    assert all(a[k] == b[k] for k in a)
    # existing output is refused unless --overwrite; no temp dirs are left behind
    assert main(["synth", str(tmp_path / "a.zarr"), *args]) == 2
    assert main(["synth", str(tmp_path / "a.zarr"), *args, "--overwrite"]) == 0
    assert _tree_bytes(tmp_path / "a.zarr") == b
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr", "b.zarr"]

    import zarr

    root = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")
    meta = root.attrs["linblur"]
    assert meta["seed"] == 5 and meta["fields"] == 2 and meta["planes"] == list(range(0, 17, 2))
    assert meta["plane_defocus_um"][-1] == 0.0 and meta["recipe"]["keep_even"] is True
    img = root["field_001/0"]
    assert img.shape == (2, 9, 48, 64) and img.dtype == np.uint16
    ms = root["field_001"].attrs["ome"]["multiscales"][0]
    assert [ax["name"] for ax in ms["axes"]] == ["c", "z", "y", "x"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 4.0, 0.65, 0.65]
    assert root["field_001/truth/0"].shape == (2, 48, 64)
    # field 1 is reproducible alone
    f = synthesize_field(get_recipe("bbbc006-like", keep_even=True, shape=(48, 64)), 5, 1)
    assert np.array_equal(img[...], f["image"])
    assert np.array_equal(root["field_001/truth/0"][...], f["truth"])


def test_synth_psf_focus_legacy_reproduces_recorded_recipes(tmp_path):
    import zarr

    from napari_linblur.cli.main import main
    from napari_linblur.cli.train_ae import synth_command

    args = ["--fields", "1", "--seed", "2", "--shape", "40", "48", "--no-progress", "-q"]
    assert main(["synth", str(tmp_path / "new.zarr"), *args]) == 0
    assert main(["synth", str(tmp_path / "old.zarr"), *args, "--psf-focus", "legacy"]) == 0
    new = zarr.open_group(str(tmp_path / "new.zarr"), mode="r")
    old = zarr.open_group(str(tmp_path / "old.zarr"), mode="r")
    assert new.attrs["linblur"]["recipe"]["optics"]["focus"] == "sharpest"
    rec_old = old.attrs["linblur"]["recipe"]
    assert rec_old["optics"]["focus"] == "legacy"
    # the stored recipe renders the same data again (a recipe without the field, as recorded before 0.2, too)
    legacy = get_recipe("bbbc006-like", shape=(40, 48))
    legacy = legacy.replace(optics=legacy.optics.replace(focus="legacy"))
    f = synthesize_field(legacy, 2, 0)
    assert np.array_equal(old["field_000/0"][...], f["image"])
    unversioned = {**rec_old, "optics": {k: v for k, v in rec_old["optics"].items() if k != "focus"}}
    assert np.array_equal(synthesize_field(get_recipe(unversioned), 2, 0)["image"], f["image"])
    assert not np.array_equal(new["field_000/0"][...], f["image"])  # the sharpest-plane focus moved 0 µm
    # the reproduce-command recorded in a model card names the convention
    assert synth_command(rec_old, 2, 1).endswith("--psf-focus legacy")
    assert synth_command(unversioned, 2, 1).endswith("--psf-focus legacy")
    assert "--psf-focus" not in synth_command(new.attrs["linblur"]["recipe"], 2, 1)


def test_write_dataset_training_recipe_and_errors(tmp_path):
    r = get_recipe("training", shape=(32, 32))
    p = write_synthetic_dataset(
        tmp_path / "t.zarr", r, fields=2, seed=1, keep_even=True, progress=False
    )
    import zarr

    root = zarr.open_group(str(p), mode="r")
    r0 = root["field_000"].attrs["linblur"]["recipe"]
    r1 = root["field_001"].attrs["linblur"]["recipe"]
    assert r0["randomize"] is None and r0["optics"] != r1["optics"]
    assert root["field_000/0"].shape == (2, 9, 32, 32)
    with pytest.raises(FileExistsError):
        write_synthetic_dataset(p, r, fields=1, progress=False)
    with pytest.raises(ValueError, match="fields"):
        write_synthetic_dataset(tmp_path / "u.zarr", r, fields=0, progress=False)
    with pytest.raises(ValueError, match="seed"):
        write_synthetic_dataset(tmp_path / "u.zarr", r, fields=1, seed=-1, progress=False)
    assert not (tmp_path / "u.zarr").exists()
    (tmp_path / "notes.txt").write_text("x")  # a file where a folder of the output should be: named, up front
    with pytest.raises(ValueError, match="notes.txt is a file"):
        write_synthetic_dataset(tmp_path / "notes.txt" / "u.zarr", r, fields=1, progress=False)


def test_overwrite_replaces_zarr_outputs_only(tmp_path):
    """--overwrite (overwrite=True) replaces an earlier zarr output, never a file or a plain folder."""
    from napari_linblur.io.omezarr import write_ome_zarr

    tif = tmp_path / "raw.bin"  # a file (a .tif name is refused before: an OME-Zarr is a folder)
    tif.write_bytes(b"precious")
    folder = tmp_path / "mydata"
    folder.mkdir()
    (folder / "img.tif").write_bytes(b"precious")
    for target in (tif, folder):
        with pytest.raises(ValueError, match="refusing to replace"):
            write_ome_zarr(target, np.zeros((2, 16, 16), np.uint16), overwrite=True)
    assert tif.read_bytes() == b"precious" and (folder / "img.tif").read_bytes() == b"precious"
    out = write_ome_zarr(tmp_path / "o.zarr", np.zeros((2, 16, 16), np.uint16))
    write_ome_zarr(out, np.ones((2, 16, 16), np.uint16), overwrite=True)  # an earlier output: replaced


def test_synth_cli_quiet_prints_nothing_and_draws_no_bar_into_a_pipe(tmp_path):
    """``-q`` prints nothing on success, and no command draws a bar into a log file or a pipe (stderr not a
    terminal): ``linblur synth`` used to write tqdm's carriage returns there even with ``-q``."""
    import subprocess
    import sys

    args = ["--fields", "1", "--shape", "32", "32", "--planes", "even"]
    for extra, out in (([], "a.zarr"), (["-q"], "b.zarr")):
        done = subprocess.run([sys.executable, "-m", "napari_linblur.cli.main", "synth", str(tmp_path / out),
                               *args, *extra], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "\r" not in done.stderr and "field/s" not in done.stderr, done.stderr
        assert (tmp_path / out).is_dir()
    assert done.stdout == "" and done.stderr == ""  # -q: silent


def test_synth_names_what_a_killed_earlier_write_left(tmp_path):
    """linblur synth never warned about the hidden folder a killed earlier run left (the other writers did)."""
    from napari_linblur.synth.dataset import write_synthetic_dataset
    from napari_linblur.synth.recipes import get_recipe

    left = tmp_path / ".d.zarr.tmp-0123456789ab"
    left.mkdir()
    with pytest.warns(UserWarning, match=r"1 earlier write\(s\) of this output left behind.*\.d\.zarr\.tmp-"):
        write_synthetic_dataset(tmp_path / "d.zarr", get_recipe("bbbc006-like", shape=(32, 32)), 1, 0,
                                progress=False)
    assert left.is_dir() and (tmp_path / "d.zarr").is_dir()
