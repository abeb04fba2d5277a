"""Edge cases of the command line's checks and of the I/O layer: report paths checked before any work, option
errors that name the option, atomic benchmark reports, pixel sizes in any length unit, NGFF axis order."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_linblur.cli.main import main
from napari_linblur.io.omezarr import write_ome_zarr
from napari_linblur.io.readers import open_zstack_with_metadata

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- linblur focus --json/--csv


@pytest.mark.parametrize("option", ["--json", "--csv"])
def test_focus_refuses_an_unwritable_report_folder_before_any_work(tmp_path, monkeypatch, capsys, option):
    import napari_linblur.inference.defocus_ops as defocus_ops

    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, np.random.default_rng(0).integers(0, 100, (4, 32, 32), dtype=np.uint16))
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access

    def access(path, mode, *args, **kwargs):  # tests run as root, who may write anywhere: deny it for `locked`
        if Path(path).resolve() == locked.resolve() and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(defocus_ops, "focus_curve", lambda *a, **k: pytest.fail("computed before the check"))
    report = locked / f"focus.{option[2:]}"
    assert main(["focus", str(tif), "--method", "brenner", option, str(report)]) == 2
    err = capsys.readouterr().err
    assert f"{option} {report}" in err and "not writable" in err
    # a file where the report's folder should be is named as such
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["focus", str(tif), "--method", "brenner", option, str(afile / "f.json")]) == 2
    err = capsys.readouterr().err
    assert option in err and "is a file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "locked", "stack.tif"]


# ----------------------------------------------------------------------------------- linblur evaluate deblur options


@pytest.mark.parametrize(("argv", "says"), [
    (["--depths", "nan"], "--depths"),
    (["--depths", "1", "inf"], "--depths"),
    (["--side", "100"], "--side"),
    (["--side", "24"], "--side"),
    (["--speed-side", "0"], "--speed-side"),
    (["--n", "0"], "--n"),
    (["--seed", "-1"], "--seed"),
])
def test_evaluate_deblur_option_errors_name_the_option(tmp_path, capsys, monkeypatch, argv, says):
    import napari_linblur.evaluation.deblur as evaluation

    monkeypatch.setattr(evaluation, "evaluate_deblur", lambda *a, **k: pytest.fail("evaluated a bad option"))
    out = tmp_path / "ev"
    assert main(["evaluate", "deblur", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert f"{says} must be" in err and "got" in err, err
    assert not out.exists()


def test_a_report_named_dash_is_refused_not_written_as_a_file_named_dash(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tif = tmp_path / "s.tif"
    tifffile.imwrite(tif, np.random.default_rng(0).integers(0, 100, (2, 16, 16), dtype=np.uint16))
    for option in ("--json", "--csv"):
        assert main(["focus", str(tif), "--method", "brenner", option, "-"]) == 2
        assert f"{option} -: the report is written to a file, not to standard output" in capsys.readouterr().err
    assert not (tmp_path / "-").exists()


def test_an_evaluation_never_replaces_earlier_reports_without_overwrite(tmp_path, capsys, monkeypatch):
    """A second evaluation into one --out replaced the first one's reports without a word; now, as every other
    command's output, only with --overwrite (refused before any work)."""
    import napari_linblur.evaluation.defocus as ev

    monkeypatch.setattr(ev, "evaluate_defocus", lambda *a, **k: pytest.fail("evaluated before the check"))
    for command, stem in (("defocus", "defocus_eval"), ("deblur", "deblur_eval"), ("ae", "evaluate_ae")):
        out = tmp_path / command
        out.mkdir()
        (out / f"{stem}.md").write_text("earlier")
        argv = ["evaluate", command, "--out", str(out)] + (["--data", str(tmp_path / "none.zarr")]
                                                           if command == "ae" else [])
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"already holds {stem}.md (an earlier evaluation): give --overwrite" in err, err
        assert (out / f"{stem}.md").read_text() == "earlier"


def test_evaluate_defocus_seed_is_checked_naming_the_option(tmp_path, capsys, monkeypatch):
    import napari_linblur.evaluation.defocus as evaluation

    monkeypatch.setattr(evaluation, "evaluate_defocus", lambda *a, **k: pytest.fail("evaluated a bad option"))
    out = tmp_path / "ev"
    assert main(["evaluate", "defocus", "--out", str(out), "--seed", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--seed must be" in err and "got -1" in err and "non-negative integer" not in err, err
    assert not out.exists()


# ---------------------------------------------------------------------------- output paths below a file


def test_an_output_below_a_file_is_refused_naming_the_file(tmp_path, capsys, monkeypatch):
    """``linblur defocus-map IN notes.txt/o.zarr`` and ``linblur synth notes.txt/x.zarr``: the file in the way is
    named before any work (no cluster started, nothing synthesized), not a bare ``[Errno 17] File exists``."""
    import napari_linblur.batch as batch
    import napari_linblur.synth.dataset as dataset

    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, np.random.default_rng(0).integers(0, 100, (2, 32, 32), dtype=np.uint16))
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    monkeypatch.setattr(batch, "dask_client", lambda *a, **k: pytest.fail("started a cluster before the check"))
    monkeypatch.setattr(dataset, "synthesize_field", lambda *a, **k: pytest.fail("synthesized before the check"))
    for argv in (["defocus-map", str(tif), str(afile / "o.zarr")],
                 ["synth", str(afile / "x.zarr"), "--shape", "32", "48", "--no-progress"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{afile} is a file" in err and "Errno" not in err, err
    assert afile.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "stack.tif"]


def test_an_output_named_like_a_file_or_empty_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """``linblur defocus-map IN out.tif`` wrote an OME-Zarr *folder* named out.tif; an empty name was reported as
    'refusing to overwrite its own input'. Both are named now, before any work, and nothing is written."""
    import napari_linblur.batch as batch
    import napari_linblur.synth.dataset as dataset

    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, np.random.default_rng(0).integers(0, 100, (2, 32, 32), dtype=np.uint16))
    monkeypatch.setattr(batch, "dask_client", lambda *a, **k: pytest.fail("started a cluster before the check"))
    monkeypatch.setattr(dataset, "synthesize_field", lambda *a, **k: pytest.fail("synthesized before the check"))
    monkeypatch.chdir(tmp_path)
    for argv, says in ((["defocus-map", str(tif), "maps.tif"], "not a .tif file; name it maps.zarr"),
                       (["deblur", str(tif), "sharp.TIFF"], "not a .TIFF file; name it sharp.zarr"),
                       (["defocus-map", str(tif), ""], "the output path is empty"),
                       (["synth", "data.tif", "--shape", "32", "48", "--no-progress"], "name it data.zarr")):
        assert main(argv) == 2
        assert says in capsys.readouterr().err
    (tmp_path / "a.zarr").symlink_to(tmp_path / "b.zarr")  # links that point at each other
    (tmp_path / "b.zarr").symlink_to(tmp_path / "a.zarr")
    for argv in (["focus", "a.zarr", "--method", "brenner"], ["defocus-map", str(tif), "a.zarr"]):
        assert main(argv) == 2  # it was a bare RuntimeError traceback
        assert "symbolic links point at each other" in capsys.readouterr().err
    (tmp_path / "a.zarr").unlink()
    (tmp_path / "b.zarr").unlink()
    for argv in (["deblur", "", "out.zarr"], ["focus", ""]):  # an empty input was read as the current folder
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and "argument input: the input path is empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stack.tif"]


def test_check_out_not_in_input_guards_the_whole_store(tmp_path):
    """The shared check of the training and evaluation commands (``--out`` against ``--data``/``--content-from``):
    the input's outermost zarr store and everything inside it are refused; a folder beside or around it is fine."""
    from napari_linblur.cli._groups import check_out_not_in_input

    store = write_ome_zarr(tmp_path / "d.zarr", np.zeros((2, 8, 8), np.uint8))
    for out in (store, store / "0", store / "new" / "run"):
        with pytest.raises(ValueError, match=r"--out .*: refusing to write into its own input \(--content-from"):
            check_out_not_in_input(str(out), str(store / "0"), source_option="--content-from")
    for out in (tmp_path, tmp_path / "run", tmp_path / "d.zarr.run"):
        check_out_not_in_input(str(out), str(store))
    check_out_not_in_input(str(store), None)  # an optional input not given
    plain = tmp_path / "tiffs"  # not a zarr store: the folder itself is the input
    plain.mkdir()
    with pytest.raises(ValueError, match="its own input"):
        check_out_not_in_input(str(plain / "run"), str(plain))


# ------------------------------------------------------------------------------------------- benchmarks/run.py


def test_bench_report_is_written_atomically_as_strict_json(tmp_path):
    import runpy

    here = tmp_path / "benchmarks"
    here.mkdir()
    shutil.copy(ROOT / "benchmarks" / "run.py", here / "run.py")
    (here / "bench_fake.py").write_text(
        "def run(report):\n    report('fake', [{'name': 'x', 'ratio': float('nan'), 'n': 2}])\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "bench.json").write_text("earlier report")
    os.link(out / "bench.json", tmp_path / "earlier.json")  # a write in place would change this link too
    old = sys.argv
    sys.argv = ["run.py", "--out", str(out)]
    try:
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(here / "run.py"), run_name="__main__")
    finally:
        sys.argv = old
    assert done.value.code == 0
    text = (out / "bench.json").read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON token {c}"))
    assert data["results"]["fake"] == [{"name": "x", "ratio": None, "n": 2}]
    assert (tmp_path / "earlier.json").read_text() == "earlier report"  # replaced by a rename, not rewritten
    assert sorted(p.name for p in out.iterdir()) == ["bench.json"]  # no temporary file left


# ----------------------------------------------------------------------------- pixel sizes in other length units


def test_length_in_micrometres():
    from napari_linblur.io.readers import length_in_um

    assert length_in_um(650.0, "nanometer") == pytest.approx(0.65)
    assert length_in_um(0.65, "micrometer") == 0.65
    assert length_in_um(0.00065, "millimeter") == pytest.approx(0.65)
    assert length_in_um(6500.0, "angstrom") == pytest.approx(0.65)
    assert length_in_um(1.0, "inch") == pytest.approx(25400.0)
    for unknown in (None, "pixel", "second", "furlong"):
        assert length_in_um(1.0, unknown) is None


def _um_args(src, *extra):
    from napari_linblur.cli.main import build_parser

    return build_parser().parse_args(["defocus-map", str(src), "out.zarr", "--um", "--na", "0.45", "--wavelength",
                                      "0.52", *extra])


def test_defocus_map_um_takes_the_pixel_size_in_any_length_unit(tmp_path):
    from napari_linblur.cli.apply_defocus import optics_from_args

    stack = np.zeros((2, 32, 32), np.uint16)
    in_nm = write_ome_zarr(tmp_path / "nm.zarr", stack, axes="zyx", scale=(2000.0, 650.0, 650.0), units="nanometer")
    assert optics_from_args(_um_args(in_nm)).pixel_um == pytest.approx(0.65)
    in_mm = write_ome_zarr(tmp_path / "mm.zarr", stack, axes="zyx", scale=(0.002, 0.00065, 0.00065),
                           units="millimeter")
    assert optics_from_args(_um_args(in_mm)).pixel_um == pytest.approx(0.65)
    tif = tmp_path / "nm.tif"  # an ImageJ TIFF calibrated in nm: 650 nm per pixel
    tifffile.imwrite(tif, stack, imagej=True, resolution=(1 / 650.0, 1 / 650.0), metadata={"unit": "nm"})
    assert open_zstack_with_metadata(tif)[1].units[-1] == "nanometer"
    assert optics_from_args(_um_args(tif)).pixel_um == pytest.approx(0.65)
    # no unit, or not a length: refused, naming the option that gives the pixel size
    for name, units in (("none.zarr", None), ("seconds.zarr", "second")):
        src = write_ome_zarr(tmp_path / name, stack, axes="zyx", scale=(1.0, 0.65, 0.65), units=units)
        with pytest.raises(ValueError, match="pass --pixel-um"):
            optics_from_args(_um_args(src))
    assert optics_from_args(_um_args(tmp_path / "none.zarr", "--pixel-um", "0.5")).pixel_um == 0.5
    # optics options without --um were ignored silently (--na was refused, --ni and --psf-model not)
    from napari_linblur.cli.main import build_parser

    for extra in (["--ni", "1.515"], ["--psf-model", "disc"]):
        args = build_parser().parse_args(["defocus-map", str(in_nm), "out.zarr", *extra])
        with pytest.raises(ValueError, match="only convert.* to µm: add --um"):
            optics_from_args(args)
    assert optics_from_args(_um_args(in_nm, "--ni", "1.33")).ni == 1.33
    assert optics_from_args(_um_args(in_nm)).ni == 1.0 and optics_from_args(_um_args(in_nm)).model == "born_wolf"
    # ImageJ writers spell micrometres many ways ('Micron', 'microns', 'Micrometers'): all one length unit, as the
    # plugin (napari's unit registry) already read them
    for spelled in ("Micron", "microns", "Micrometers", "MICRON"):
        tif = tmp_path / f"{spelled}.tif"
        tifffile.imwrite(tif, stack, imagej=True, resolution=(2.0, 2.0), metadata={"unit": spelled})
        assert open_zstack_with_metadata(tif)[1].units[-1] == "micrometer", spelled
        assert optics_from_args(_um_args(tif)).pixel_um == pytest.approx(0.5)


def test_napari_reader_opens_files_whose_unit_napari_does_not_know(tmp_path):
    """napari refused the whole layer for a unit its registry cannot parse ('mikron'), and read 'a.u.' as atomic
    mass unit x year: such axes open in pixels, with a warning naming the file."""
    from napari_linblur._napari._reader import _napari_units

    assert _napari_units(("micrometer", "second", None, "px"), tmp_path) == ["micrometer", "second", "pixel", "pixel"]
    for odd in ("mikron", "a.u."):
        with pytest.warns(UserWarning, match=f"unit '{odd}' is not a length or time napari knows"):
            assert _napari_units(("micrometer", odd), tmp_path) == ["micrometer", "pixel"]


# ------------------------------------------------------------------------------------------ NGFF axes of outputs


def _ngff_axes(path: Path) -> list[dict]:
    return json.loads((Path(path) / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]["axes"]


def test_a_custom_axis_beside_time_is_written_in_ngff_order(tmp_path):
    """NGFF: the time axis comes first and the space axes last. The reader puts an axis of unknown meaning first
    ('?tzyx'); the writer stores it after time, and the data read back are the same."""
    models = pytest.importorskip("ome_zarr_models.v05.image")
    data = np.arange(2 * 3 * 2 * 16 * 16, dtype=np.uint16).reshape(2, 3, 2, 16, 16)
    # a valid NGFF input (time, a custom axis, space): read as '?tzyx'
    src = write_ome_zarr(tmp_path / "in.zarr", data, axes="tazyx", scale=(1, 1, 2.0, 0.5, 0.5))
    models.Image.from_zarr(zarr.open_group(str(src), mode="r"))
    arr, meta = open_zstack_with_metadata(src)
    assert meta.axes == "?tzyx"
    from napari_linblur.io.omezarr import writable_axes

    out = write_ome_zarr(tmp_path / "out.zarr", arr, axes=writable_axes(meta.axes), scale=meta.scale,
                         units=meta.units, translate=(0.0, 0.0, 0.0, 1.0, 2.0))
    assert [a["name"] for a in _ngff_axes(out)] == ["t", "a", "z", "y", "x"]
    models.Image.from_zarr(zarr.open_group(str(out), mode="r"))  # raises if not valid NGFF 0.5
    back, meta2 = open_zstack_with_metadata(out)
    assert meta2.axes == "?tzyx" and meta2.scale == meta.scale and meta2.units == meta.units
    assert meta2.translate == (0.0, 0.0, 0.0, 1.0, 2.0)
    np.testing.assert_array_equal(back.compute(), arr.compute())
    # the space axes go last too: a channel given after Z is stored before it
    out2 = write_ome_zarr(tmp_path / "zc.zarr", data[0].transpose(1, 0, 2, 3), axes="zcyx",
                          scale=(2.0, 1.0, 0.65, 0.5), translate=(4.0, 0.0, 1.0, 3.0),
                          units=("micrometer", None, "micrometer", "nanometer"),
                          channel_names=["a", "b", "c"], chunks=(1, 3, 16, 16))
    assert [a["name"] for a in _ngff_axes(out2)] == ["c", "z", "y", "x"]
    models.Image.from_zarr(zarr.open_group(str(out2), mode="r"))
    back2, meta3 = open_zstack_with_metadata(out2)
    assert meta3.axes == "czyx" and meta3.channel_names == ["a", "b", "c"]
    # each axis keeps its own calibration through the reordering
    assert meta3.scale == (1.0, 2.0, 0.65, 0.5) and meta3.translate == (0.0, 4.0, 1.0, 3.0)
    assert meta3.units == (None, "micrometer", "micrometer", "nanometer")
    np.testing.assert_array_equal(back2.compute(), data[0])


def test_position_and_channel_axes_are_valid_ngff_and_round_trip(tmp_path):
    """A BBBC006-style 'pczyx' result: a custom position axis (no type) before the channel axis, then space."""
    models = pytest.importorskip("ome_zarr_models.v05.image")
    from ome_zarr.axes import Axes
    from ome_zarr.format import FormatV05

    data = np.random.default_rng(0).integers(0, 100, (2, 2, 3, 16, 16)).astype(np.uint16)
    out = write_ome_zarr(tmp_path / "p.zarr", data, axes="pczyx", scale=(1, 1, 2.0, 0.65, 0.65),
                         channel_names=["w1", "w2"], attrs={"linblur": {"fields": ["a01_s1", "k06_s2"]}})
    axes = _ngff_axes(out)
    assert [(a["name"], a.get("type")) for a in axes] == [("p", None), ("c", "channel"), ("z", "space"),
                                                           ("y", "space"), ("x", "space")]
    models.Image.from_zarr(zarr.open_group(str(out), mode="r"))
    Axes(axes, fmt=FormatV05()).validate()
    back, meta = open_zstack_with_metadata(out)
    assert meta.axes == "pczyx" and meta.channel_names == ["w1", "w2"] and meta.extra["fields"] == ["a01_s1",
                                                                                                   "k06_s2"]
    np.testing.assert_array_equal(back.compute(), data)


def test_help_shows_real_defaults_and_never_default_none():
    """Every sub-command's --help shows an option's default when it has one, and never "(default: None)": an
    absent option's meaning is in its help (e.g. synthesize --alpha: 0.5 unless --positions is given)."""
    import argparse

    from napari_linblur.cli.main import build_parser

    def parsers(p):
        yield p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    helps = {p.prog: p.format_help() for p in parsers(build_parser())}
    assert len(helps) > 10
    assert not [prog for prog, text in helps.items() if "default: None" in text]
    assert "(default: 64)" in " ".join(helps["linblur train defocus"].split())  # --bn-batches
    assert "default 0.5 unless --positions" in " ".join(helps["linblur synthesize"].split())


def test_a_size_this_computer_cannot_hold_is_a_one_line_error_and_leaves_nothing(tmp_path, capsys):
    """``linblur synth --shape 300000 300000`` needs hundreds of GB: a MemoryError traceback before; now one line
    saying what to make smaller, exit code 2, and no output or temporary folder left."""
    from napari_linblur.cli.main import main

    assert main(["synth", str(tmp_path / "huge.zarr"), "--shape", "300000", "300000", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("linblur synth: error: not enough memory") and "--shape" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_an_out_folder_that_is_a_file_is_named(tmp_path, capsys):
    """``--out z.tif`` (a file) for the demo or a training run: '[Errno 17] File exists' before; now the option and
    what it must be. The file is untouched."""
    from napari_linblur.cli.main import main
    from napari_linblur.io.atomic import make_output_folder

    f = tmp_path / "z.tif"
    f.write_bytes(b"not a folder")
    assert main(["demo", "--out", str(f), "--device", "cpu"]) == 2
    assert f"--out {f} is a file; --out must be a folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--out .* is a file"):
        make_output_folder(f / "run")  # a file in the way of a parent
    assert f.read_bytes() == b"not a folder"


def test_batch_errors_about_the_image_name_the_input_file(tmp_path, capsys):
    """``linblur defocus-map`` said ``img has shape …`` / ``img contains NaN …``: the API's argument, which a user of
    the command line never named. The message names the input file; nothing is written."""
    from napari_linblur.cli.main import main

    thin = tmp_path / "thin.tif"
    tifffile.imwrite(thin, np.ones((3, 1, 40), np.float32))
    bad = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    bad[1, 3, 3] = np.nan
    nan = tmp_path / "nan.tif"
    tifffile.imwrite(nan, bad)
    for path, says in ((thin, "planes must be at least 4x4 pixels"), (nan, "contains NaN or Inf values")):
        out = tmp_path / f"{path.stem}.zarr"
        assert main(["defocus-map", str(path), str(out), "--device", "cpu", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"error: {str(path)!r}" in err and says in err and "img" not in err, err
        assert not out.exists()


def test_a_truncated_tiff_is_one_error_line_without_tifffiles_log_lines(tmp_path, capsys, caplog):
    """tifffile logged 'ImageJ series metadata invalid…' and 'invalid page offset…' (to stderr, without a logging
    setup) before our one-line error; those records are dropped while napari-linblur reads, and only then (tifffile
    used elsewhere keeps them)."""
    import logging

    from napari_linblur.cli.main import main

    good = tmp_path / "ij.tif"
    tifffile.imwrite(good, np.ones((12, 32, 32), np.uint16), imagej=True)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with caplog.at_level(logging.DEBUG, logger="tifffile"):
        assert main(["focus", str(cut), "--method", "brenner"]) == 2
        assert [r.getMessage() for r in caplog.records if r.name.startswith("tifffile")] == []
        err = capsys.readouterr().err
        assert err.strip().splitlines() == [f"linblur focus: error: {cut}: truncated TIFF, its ImageJ header "
                                            "announces 12 images but only 1 can be read"], err
        with tifffile.TiffFile(cut) as tf:  # tifffile used directly: its messages are kept
            assert len(tf.series[0].pages) >= 1
        assert any("invalid" in r.getMessage() for r in caplog.records if r.name.startswith("tifffile"))


def test_a_file_name_that_is_not_utf8_prints_and_is_reported_not_a_crash_after_the_work(tmp_path):
    """A Latin-1 file name on a share (bytes b'caf\\xe9.tif'): with a strict UTF-8 stdout, `linblur focus` failed while
    printing its line and `--csv` while writing the table (exit 2 after the work). Both now carry the name's bytes."""
    import subprocess

    folder = os.fsencode(tmp_path / "lat1")
    os.mkdir(folder)
    rng = np.random.default_rng(0)
    name = os.fsdecode(os.path.join(folder, b"caf\xe9.tif"))
    tifffile.imwrite(name, rng.poisson(300, (3, 40, 40)).astype(np.uint16) + 100, photometric="minisblack")
    csv = tmp_path / "r.csv"
    env = dict(os.environ, PYTHONIOENCODING="utf-8", LC_ALL="C.UTF-8")
    run = subprocess.run([sys.executable, "-m", "napari_linblur.cli.main", "focus", name, "--method",
                          "tenengrad", "--csv", str(csv)], capture_output=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr.decode("utf-8", "replace")
    assert b"caf\xe9" in run.stdout and b"caf\xe9" in csv.read_bytes()


def test_write_errors_name_the_output_and_keep_the_earlier_one(tmp_path, monkeypatch):
    """A full disk gave '[Errno 28] No space left on device' naming no file (zarr's and the report writers'), and
    safetensors' own I/O error (not an OSError) a traceback from training: each is now an OSError naming the output,
    and the earlier output is kept."""
    import errno

    import napari_linblur.io.omezarr as omezarr
    from napari_linblur.io.atomic import atomic_target, write_text_atomic

    report = tmp_path / "r.json"
    write_text_atomic(report, "old")

    class SafetensorError(Exception):  # safetensors' class, matched by name as the writer matches it
        pass

    for raised, errno_ in ((OSError(errno.ENOSPC, "No space left on device"), errno.ENOSPC),
                           (SafetensorError("I/O error: No space left on device (os error 28)"), None)):
        with pytest.raises(OSError, match=f"cannot write {report}: .*No space left.*nothing was written") as info:
            with atomic_target(report):
                raise raised
        assert info.value.errno == errno_ and report.read_text() == "old"
    store = tmp_path / "o.zarr"
    write_ome_zarr(store, np.zeros((2, 8, 8), np.float32), axes="zyx")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(omezarr, "_write_tree", full)
    with pytest.raises(OSError, match=f"cannot write {store}: No space left"):
        write_ome_zarr(store, np.ones((2, 8, 8), np.float32), axes="zyx", overwrite=True)
    assert float(zarr.open_group(store, mode="r")["0"][:].max()) == 0.0  # the earlier output
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.zarr")]
    # a report path ending in a separator is refused, not written without it
    with pytest.raises(ValueError, match="ends with a folder separator"):
        write_text_atomic(str(tmp_path / "new.csv") + os.sep, "x")
    assert not (tmp_path / "new.csv").exists()


def test_an_existing_file_or_foreign_folder_is_refused_as_such_without_suggesting_overwrite(tmp_path, capsys):
    """`linblur defocus-map in.tif notes` (a plain file) said 'already exists; pass --overwrite', and with it 'refusing
    to replace it': the refusal now comes first."""
    notes = tmp_path / "notes"
    notes.write_text("keep")
    tif = tmp_path / "s.tif"
    tifffile.imwrite(tif, np.random.default_rng(0).poisson(300, (2, 32, 32)).astype(np.uint16))
    assert main(["defocus-map", str(tif), str(notes), "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "refusing to replace it" in err and "pass overwrite" not in err and notes.read_text() == "keep"
    assert main(["synth", str(notes), "--fields", "1"]) == 2  # the synthetic dataset writer too
    err = capsys.readouterr().err
    assert "refusing to replace it" in err and "pass overwrite" not in err and notes.read_text() == "keep"


def test_a_store_whose_metadata_names_a_missing_array_says_so_at_open(tmp_path):
    """A damaged store (its array folder gone) said 'not found when it was read (moved, deleted or unmounted since
    the run started?)' at open, before any run: it now says the metadata names an array that is not there."""
    store = write_ome_zarr(tmp_path / "z.zarr", np.zeros((2, 16, 16), np.float32), axes="zyx")
    shutil.rmtree(store / "0")
    with pytest.raises(ValueError, match="metadata names this array, but it is not there"):
        open_zstack_with_metadata(store)


def test_an_earlier_output_that_cannot_be_deleted_is_said_not_left_silently(tmp_path, monkeypatch):
    """Replacing a store whose old copy could not be deleted (another user's files in a shared folder) left it hidden
    beside the new one, silently: the old store's place is now named in a warning (and a store whose folder is not
    writable is refused before any work; root can write anything, so that check is not visible here)."""
    import shutil as sh

    store = tmp_path / "o.zarr"
    write_ome_zarr(store, np.zeros((2, 8, 8), np.float32), axes="zyx")
    real = sh.rmtree

    def refuse(path, *args, **kwargs):
        cb = kwargs.get("onexc") or kwargs.get("onerror")
        err = PermissionError(13, "Permission denied")
        cb(os.rmdir, str(path), err if "onexc" in kwargs else (PermissionError, err, None))

    monkeypatch.setattr(sh, "rmtree", refuse)
    with pytest.warns(UserWarning, match="earlier version could not be deleted .*Permission denied.*delete it"):
        write_ome_zarr(store, np.ones((2, 8, 8), np.float32), axes="zyx", overwrite=True)
    monkeypatch.setattr(sh, "rmtree", real)
    assert float(zarr.open_group(store, mode="r")["0"][:].max()) == 1.0


def test_reports_and_run_folders_inside_a_zarr_store_are_refused(tmp_path, capsys):
    """`linblur focus --json out/lat.zarr/0/r.json` and `train --out out/lat.zarr/run` wrote into another dataset's
    store (the zarr writers already refused it): every output is outside any store."""
    from napari_linblur.io.atomic import make_output_folder, write_text_atomic

    store = tmp_path / "lat.zarr"
    write_ome_zarr(store, np.zeros((2, 8, 8), np.float32), axes="zyx")
    with pytest.raises(ValueError, match="refusing to write inside the zarr store"):
        write_text_atomic(store / "0" / "r.json", "{}")
    with pytest.raises(ValueError, match="refusing to write inside the zarr store"):
        make_output_folder(store / "run")
    assert not (store / "0" / "r.json").exists() and not (store / "run").exists()
    tif = tmp_path / "s.tif"
    tifffile.imwrite(tif, np.random.default_rng(0).poisson(300, (2, 32, 32)).astype(np.uint16))
    assert main(["focus", str(tif), "--method", "tenengrad", "--json", str(store / "r.json")]) == 2
    assert "inside the zarr store" in capsys.readouterr().err and not (store / "r.json").exists()


def test_an_out_folder_that_is_a_dangling_or_looping_link_is_named(tmp_path):
    from napari_linblur.io.atomic import make_output_folder

    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "gone").symlink_to(tmp_path / "nothing")
    for link in ("a", "gone"):
        with pytest.raises(ValueError, match="symbolic link that leads nowhere"):
            make_output_folder(tmp_path / link)


def test_a_report_folder_made_for_reports_that_could_not_be_written_is_not_left_empty(tmp_path, monkeypatch):
    """`linblur evaluate deblur --out small/ev` on a full disk left an empty ev/ after the error."""
    import errno

    import napari_linblur.io.atomic as atomic
    from napari_linblur.evaluation.report import write_reports

    def full(path, obj, **kwargs):
        raise OSError(errno.ENOSPC, f"cannot write {path}: No space left on device")

    monkeypatch.setattr(atomic, "write_json_atomic", full)
    with pytest.raises(OSError, match="No space left"):
        write_reports(tmp_path / "ev" / "a" / "b", "x_eval", {"command": "c"}, "| a |")
    assert not (tmp_path / "ev").exists()  # the folders it made above it too
    (tmp_path / "old").mkdir()
    with pytest.raises(OSError):
        write_reports(tmp_path / "old", "x_eval", {}, "")
    assert (tmp_path / "old").is_dir()  # a folder that was there stays


def test_a_callers_writer_marker_must_be_a_mapping(tmp_path):
    with pytest.raises(ValueError, match="must be a mapping"):
        write_ome_zarr(tmp_path / "o.zarr", np.zeros((2, 8, 8), np.float32), axes="zyx",
                       attrs={"napari_linblur": "note"})
    assert not (tmp_path / "o.zarr").exists()


def test_abbreviations_empty_values_and_unused_options_are_refused(tmp_path, capsys):
    """argparse took '--pool 24' for '--pool-size 24' (train defocus) while '--pool' is another option of train
    deblur; '--out ""' wrote a training run into the current folder; '--scheduler ""' ran a local cluster; a second
    evaluate deblur --model replaced the first; stage-1 deblur training recorded --replay it did not use."""
    from napari_linblur.cli.main import build_parser

    parser = build_parser()
    for argv in (["train", "defocus", "--out", "r", "--pool", "24"],
                 ["deblur", "in.tif", "o.zarr", "--scheduler", ""],
                 ["evaluate", "deblur", "--model", "a", "--model", "b"]):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(argv)
        assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --pool 24" in err and "scheduler address is empty" in err
    assert "--model given twice" in err
    with pytest.raises(SystemExit) as info:  # refused while parsing: nothing runs
        main(["train", "defocus", "--out", "", "--steps", "1"])
    assert info.value.code == 2 and "--out is empty" in capsys.readouterr().err
    from napari_linblur.io.atomic import make_output_folder

    with pytest.raises(ValueError, match="--out is empty"):
        make_output_folder("")
    from napari_linblur.training.loop import TrainConfig

    with pytest.raises(ValueError, match=r"out \(--out\) is empty"):
        TrainConfig(out="").validate()
    assert main(["train", "deblur", "--out", str(tmp_path / "r"), "--replay", "0.9", "--steps", "1"]) == 2
    err = capsys.readouterr().err  # named by the whole command, as argparse names it
    assert "linblur train deblur: error: --replay: not used by this run" in err and not (tmp_path / "r").exists()


def test_focus_names_the_defocus_options_a_classical_method_does_not_use(tmp_path, capsys):
    """`linblur focus --method brenner --tile 64` said "tile only applies to method='defocus'" (the Python keyword):
    the command line names its own options."""
    tif = tmp_path / "s.tif"
    tifffile.imwrite(tif, np.random.default_rng(0).poisson(300, (2, 32, 32)).astype(np.uint16),
                     photometric="minisblack")
    assert main(["focus", str(tif), "--method", "brenner", "--tile", "64", "--amp", "off", "--camera-gain", "1",
                 "--camera-offset", "100", "--read-noise", "2"]) == 2
    err = capsys.readouterr().err
    assert "--tile, --amp, --camera-gain/--camera-offset/--read-noise: only for --method defocus" in err
    assert main(["focus", str(tif), "--method", "brenner"]) == 0
