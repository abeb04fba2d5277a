"""Whole-plate reading: a BBBC006 folder with holes or odd files keeps every good field (the others are dropped with a
warning and recorded in ``meta.extra``), file headers are checked at open, and a generic TIFF folder that mixes
several series is refused instead of being read as one z-stack."""

from __future__ import annotations

import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_linblur.io._lazy import TiffFileGrid
from napari_linblur.io.bbbc006 import planes_text
from napari_linblur.io.readers import open_zstack, open_zstack_with_metadata

UUID = "2667264a-6432-4f7e-bf58-625a1319a1c9"
REAL = Path("/work/shared/data/00_mcf-z-stacks-03212011_k06_s2_w12667264a-6432-4f7e-bf58-625a1319a1c9.tif")
needs_real = pytest.mark.skipif(not REAL.exists(), reason="real BBBC006 sample not available")
SHAPE = (12, 16)
FIELDS = (("a01", 1), ("a02", 1))


def _name(z: int, well: str, site: int, w: int) -> str:
    return f"{z:02d}_mcf-z-stacks-03212011_{well}_s{site}_w{w}{UUID}.tif"


def _value(well: str, site: int, w: int, z: int) -> int:
    """A distinct pixel value per file, to check that each plane lands where it belongs."""
    return 10_000 * (ord(well[0]) - 96) + 1000 * int(well[1:]) + 100 * site + 20 * w + z


def _plate(root: Path, fields=FIELDS, planes=(15, 16, 17), channels=(1, 2)) -> Path:
    """A flat BBBC006 folder of small uint16 planes (each file filled with its own :func:`_value`)."""
    root.mkdir(exist_ok=True)
    for well, s in fields:
        for w in channels:
            for z in planes:
                tifffile.imwrite(root / _name(z, well, s, w), np.full(SHAPE, _value(well, s, w, z), np.uint16))
    return root


def _no_warning(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def scheduler():
    """An in-process cluster of one worker with 2 threads, used as ``--scheduler``."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0",
                      scheduler_kwargs={"dashboard": False}) as cluster:
        yield cluster.scheduler_address


# ------------------------------------------------------------------------------ item 1: a hole costs its field only


def test_a_hole_in_w1_never_blocks_w2(tmp_path):
    plate = _plate(tmp_path / "plate")
    (plate / _name(16, "a02", 1, 1)).unlink()
    arr, meta = _no_warning(open_zstack_with_metadata, plate, channel="w2")
    assert arr.shape == (2, 3) + SHAPE and meta.axes == "pzyx"
    assert meta.extra["fields"] == ["a01_s1", "a02_s1"] and meta.extra["dropped_fields"] == {}
    got = arr[:, :, 0, 0].compute()
    assert got.tolist() == [[_value(w, s, 2, z) for z in (15, 16, 17)] for w, s in FIELDS]


def test_a_field_that_lacks_a_plane_is_dropped_with_a_warning(tmp_path):
    plate = _plate(tmp_path / "plate")
    (plate / _name(16, "a02", 1, 1)).unlink()
    for channel in ("w1", None):
        with pytest.warns(UserWarning, match=r"1 of 2 well/site fields left out.*a02_s1 lacks w1 plane 16"):
            arr, meta = open_zstack_with_metadata(plate, channel=channel)
        assert arr.shape[0] == 1 and meta.extra["fields"] == ["a01_s1"]
        assert meta.extra["wells"] == ["a01"] and meta.extra["sites"] == [1]
        assert meta.extra["planes"] == [15, 16, 17] and meta.extra["dropped_fields"] == {"a02_s1": [16]}
    assert arr.shape == (1, 2, 3) + SHAPE
    assert arr[0, 0, :, 0, 0].compute().tolist() == [_value("a01", 1, 1, z) for z in (15, 16, 17)]


def test_upper_case_extensions_belong_to_the_plate_and_other_tiffs_are_named(tmp_path):
    """A plane saved as ``.TIF`` used to be dropped from its field without a word (and the best plane reported
    from the others); a TIFF without a BBBC006 name in the folder is left out with a warning naming it."""
    plate = _plate(tmp_path / "plate", fields=FIELDS[:1], channels=(1,))
    src = plate / _name(16, "a01", 1, 1)
    src.rename(src.with_suffix(".TIF"))
    arr, meta = _no_warning(open_zstack_with_metadata, plate, channel="w1")
    assert meta.extra["planes"] == [15, 16, 17]
    assert arr[0, :, 0, 0].compute().tolist() == [_value("a01", 1, 1, z) for z in (15, 16, 17)]
    tifffile.imwrite(plate / "overview.tif", np.zeros(SHAPE, np.uint16))
    with pytest.warns(UserWarning, match=r"1 TIFF file\(s\) without a BBBC006 name .* left out: overview.tif"):
        assert open_zstack_with_metadata(plate, channel="w1")[0].shape == (1, 3) + SHAPE
    # on the command line the warning is one line, like an error (no source file and code listing)
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "napari_linblur.cli.main", "focus", str(plate), "--method",
                          "brenner", "--workers", "1", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    warned = [line for line in run.stderr.splitlines() if "overview.tif" in line]
    assert len(warned) == 1 and warned[0].startswith("linblur focus: warning: "), run.stderr
    assert "UserWarning" not in run.stderr and "open_zstack_with_metadata(" not in run.stderr


def test_per_plane_folders_with_a_missing_file_drop_that_field(tmp_path):
    for z in (0, 1, 2):
        sub = tmp_path / f"BBBC006_v1_images_z_{z:02d}"
        sub.mkdir()
        for well, s in (("b02", 1), ("b02", 2), ("c03", 1)):
            if (z, well, s) != (1, "b02", 2):
                tifffile.imwrite(sub / f"mcf-z-stacks-03212011_{well}_s{s}_w1{UUID}.tif", np.zeros(SHAPE, np.uint16))
    with pytest.warns(UserWarning, match="b02_s2 lacks w1 plane 1"):
        arr, meta = open_zstack_with_metadata(tmp_path, channel="w1")
    assert arr.shape == (2, 3) + SHAPE and meta.extra["fields"] == ["b02_s1", "c03_s1"]
    assert meta.extra["dropped_fields"] == {"b02_s2": [1]}


def test_no_complete_field_is_an_error_naming_what_is_missing(tmp_path):
    plate = _plate(tmp_path / "plate")
    (plate / _name(15, "a01", 1, 1)).unlink()
    (plate / _name(17, "a02", 1, 1)).unlink()
    with pytest.raises(ValueError, match=r"missing: well a01 site 1 channel w1 plane 15; "
                                         r"well a02 site 1 channel w1 plane 17; no well/site has them all"):
        open_zstack(plate, channel="w1")
    assert _no_warning(open_zstack, plate, channel="w2").shape == (2, 3) + SHAPE  # w2 is whole


def test_fields_without_a_common_plane_are_an_error(tmp_path):
    plate = _plate(tmp_path / "plate", fields=(("a01", 1),), planes=(0, 1, 2), channels=(1,))
    _plate(plate, fields=(("a02", 1),), planes=(3, 4, 5), channels=(1,))
    with pytest.raises(ValueError, match=r"incomplete BBBC006 folder.*no plane in common \(a01_s1: planes 0-2; "
                                         r"a02_s1: planes 3-5\)"):
        open_zstack(plate)
    _plate(plate, fields=(("b01", 1),), planes=(6, 7), channels=(1,))  # three fields: no plane half of them hold
    with pytest.raises(ValueError, match=r"incomplete BBBC006 folder; the well/site fields have no plane in common "
                                         r"\(a01_s1: planes 0-2; a02_s1: planes 3-5; b01_s1: planes 6-7\)$"):
        open_zstack(plate)


def test_a_plane_few_fields_hold_is_left_out_not_their_fields(tmp_path):
    """One field of three holds an extra plane: the plane is left out (with a warning), every field is kept."""
    plate = _plate(tmp_path / "plate", fields=FIELDS + (("b01", 2),), channels=(1,))
    tifffile.imwrite(plate / _name(18, "b01", 2, 1), np.zeros(SHAPE, np.uint16))
    with pytest.warns(UserWarning, match="plane 18 left out of every stack: fewer than half"):
        arr, meta = open_zstack_with_metadata(plate)
    assert arr.shape == (3, 1, 3) + SHAPE and meta.extra["planes"] == [15, 16, 17]
    assert meta.extra["left_out_planes"] == [18] and meta.extra["dropped_fields"] == {}


@needs_real
def test_real_bbbc006_plate_with_a_hole_and_an_8_bit_field(tmp_path):
    """Copies of the real 16-bit LZW file: a hole in one field's w1, an 8-bit file in another field's w2."""
    fields = (("a01", 1), ("a02", 1), ("k06", 2))
    for z in (15, 16, 17):
        for w in (1, 2):
            for well, s in fields:
                shutil.copy(REAL, tmp_path / _name(z, well, s, w))
    (tmp_path / _name(16, "a02", 1, 1)).unlink()
    odd = tmp_path / _name(15, "k06", 2, 2)
    tifffile.imwrite(odd, (tifffile.imread(REAL) >> 8).astype(np.uint8))
    with pytest.warns(UserWarning, match="a02_s1 lacks w1 plane 16"):
        arr, meta = open_zstack_with_metadata(tmp_path, channel="w1")
    assert arr.shape == (2, 3, 520, 696) and meta.extra["fields"] == ["a01_s1", "k06_s2"]
    np.testing.assert_array_equal(arr[1, 1].compute(), tifffile.imread(REAL))
    with pytest.warns(UserWarning, match=rf"k06_s2 \({odd.name} is \(520, 696\) uint8, expected \(520, 696\) uint16\)"):
        arr, meta = open_zstack_with_metadata(tmp_path, channel="w2")
    assert arr.shape == (2, 3, 520, 696) and arr.dtype == np.uint16 and meta.extra["fields"] == ["a01_s1", "a02_s1"]
    assert meta.extra["dropped_fields"] == {} and list(meta.extra["mismatched_fields"]) == ["k06_s2"]


def test_planes_text():
    assert planes_text([16]) == "plane 16"
    assert planes_text([3, 0, 1, 2, 9, 7, 10]) == "planes 0-3, 7, 9-10"


def test_focus_on_a_plate_with_a_hole(tmp_path, scheduler, capsys):
    """The auditor's case on the command line: --channel w2 reads both fields, --channel w1 the whole one."""
    from napari_linblur.cli.main import main

    plate = _plate(tmp_path / "plate")
    (plate / _name(16, "a02", 1, 1)).unlink()
    assert main(["focus", str(plate), "--channel", "w2", "--method", "brenner", "--scheduler", scheduler]) == 0
    out = capsys.readouterr().out
    assert "a01_s1: best plane" in out and "a02_s1: best plane" in out
    with pytest.warns(UserWarning, match="a02_s1 lacks w1 plane 16"):
        assert main(["focus", str(plate), "--channel", "w1", "--method", "brenner", "--scheduler", scheduler,
                     "--json", str(tmp_path / "f.json")]) == 0
    out = capsys.readouterr().out
    assert "a01_s1: best plane" in out and "a02_s1: best plane" not in out
    assert "[dropped fields] 1 field(s) left out: a02_s1 (lacks plane 16)" in out  # named in the report too
    import json

    assert json.loads((tmp_path / "f.json").read_text())["dropped_fields"] == {"a02_s1": [16]}


# ---------------------------------------------------------------------- item 2: every file's header, checked at open


@pytest.mark.parametrize("odd, says", [
    (np.zeros(SHAPE, np.uint8), r"\(12, 16\) uint8, expected \(12, 16\) uint16"),
    (np.zeros(SHAPE, np.float32), r"\(12, 16\) float32, expected \(12, 16\) uint16"),
    (np.zeros((10, 16), np.uint16), r"\(10, 16\) uint16, expected \(12, 16\) uint16"),
    (np.zeros((2,) + SHAPE, np.uint16), r"\(12, 16\) uint16 \(2 pages\), expected \(12, 16\) uint16"),
])
def test_a_field_whose_files_differ_is_dropped_naming_shape_and_dtype(tmp_path, odd, says):
    plate = _plate(tmp_path / "plate", fields=FIELDS + (("b01", 2),))
    odd_name = _name(17, "a02", 1, 2)
    tifffile.imwrite(plate / odd_name, odd)
    with pytest.warns(UserWarning, match=rf"1 of 3 well/site fields left out.*a02_s1 \({odd_name} is {says}\)"):
        arr, meta = open_zstack_with_metadata(plate)
    assert arr.dtype == np.uint16 and arr.shape == (2, 2, 3) + SHAPE
    assert meta.extra["fields"] == ["a01_s1", "b01_s2"] and list(meta.extra["mismatched_fields"]) == ["a02_s1"]
    got = arr[:, 1, 2, 0, 0].compute()
    assert got.dtype == np.uint16 and got.tolist() == [_value("a01", 1, 2, 17), _value("b01", 2, 2, 17)]
    # the other channel of that field is fine: with w1 only, nothing is dropped
    assert _no_warning(open_zstack, plate, channel="w1").shape == (3, 3) + SHAPE


def test_an_unreadable_file_drops_its_field(tmp_path):
    plate = _plate(tmp_path / "plate", fields=FIELDS + (("b01", 2),), channels=(1,))
    (plate / _name(15, "b01", 2, 1)).write_bytes(b"II*\x00garbage")
    with pytest.warns(UserWarning, match=r"b01_s2 \(15_mcf.*not a readable TIFF"):
        arr, meta = open_zstack_with_metadata(plate)
    assert meta.extra["fields"] == ["a01_s1", "a02_s1"] and "b01_s2" in meta.extra["mismatched_fields"]


def test_a_majority_of_another_shape_wins_and_all_odd_is_an_error(tmp_path):
    plate = _plate(tmp_path / "plate", fields=FIELDS + (("b01", 2),), channels=(1,))
    for z in (15, 16, 17):  # the first field is the odd one: the majority decides, not the first file
        tifffile.imwrite(plate / _name(z, "a01", 1, 1), np.zeros((4, 4), np.uint16))
    with pytest.warns(UserWarning, match=r"a01_s1 \(15_mcf\S+ is \(4, 4\) uint16, expected \(12, 16\) uint16\)"):
        assert open_zstack(plate).shape == (2, 1, 3) + SHAPE
    three_d = _plate(tmp_path / "stacks", fields=FIELDS, channels=(1,), planes=(0,))
    for well, s in FIELDS:
        tifffile.imwrite(three_d / _name(0, well, s, 1), np.zeros((5,) + SHAPE, np.uint16))
    with pytest.raises(ValueError, match=r"expected BBBC006 files holding one 2-D plane each, got \(12, 16\) uint16 "
                                         r"\(5 pages\)"):
        open_zstack(three_d)


def test_a_file_changed_after_opening_names_its_shape_and_dtype_not_truncation(tmp_path):
    plate = _plate(tmp_path / "plate", channels=(1,))
    arr = _no_warning(open_zstack, plate, channel="w1")
    victim = plate / _name(16, "a02", 1, 1)
    tifffile.imwrite(victim, np.zeros(SHAPE, np.uint8))
    with pytest.raises(ValueError, match=rf"{victim.name}: holds a \(12, 16\) uint8 image, expected \(12, 16\) "
                                         r"uint16 like the other planes") as err:
        arr[1, 1].compute()
    assert "truncated" not in str(err.value)
    tifffile.imwrite(victim, np.zeros((5, 5), np.uint16))
    with pytest.raises(ValueError, match=r"holds a \(5, 5\) uint16 image, expected \(12, 16\) uint16"):
        arr[1].compute()
    np.testing.assert_array_equal(arr[0].compute()[:, 0, 0], [_value("a01", 1, 1, z) for z in (15, 16, 17)])


def test_the_plane_grid_slices_and_pickles(tmp_path):
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"p{i}.tif")
        tifffile.imwrite(paths[-1], np.full((4, 5), i, np.uint16))
    grid = TiffFileGrid(paths, (2, 3), (4, 5), np.uint16)
    assert grid.shape == (2, 3, 4, 5) and grid.chunks == (1, 1, 4, 5)
    assert grid[1, 0:3, 2, 1:3].tolist() == [[3, 3], [4, 4], [5, 5]]
    again = pickle.loads(pickle.dumps(grid))
    assert again[:, 2][:, 0, 0].tolist() == [2, 5]
    with pytest.raises(ValueError, match="6 paths for a grid of shape"):
        TiffFileGrid(paths, (2, 2), (4, 5), np.uint16)


def test_opening_a_plate_builds_one_graph_key_per_plane_not_per_file_arrays(tmp_path):
    """One array-like for the whole plate: the graph has a key per plane plus the grid, and it computes."""
    plate = _plate(tmp_path / "plate", fields=FIELDS + (("b01", 2),))
    arr = _no_warning(open_zstack, plate)
    assert arr.npartitions == 3 * 2 * 3 and len(dict(arr.__dask_graph__())) == arr.npartitions + 1
    assert arr.sum().compute(scheduler="threads", num_workers=2) == sum(
        _value(w, s, c, z) * SHAPE[0] * SHAPE[1] for w, s in FIELDS + (("b01", 2),) for c in (1, 2)
        for z in (15, 16, 17))


# ------------------------------------------------------------------ item 3: a folder of several series is refused


def test_a_folder_of_several_series_is_refused_with_examples(tmp_path):
    for well in ("A01", "A02"):
        for z in (15, 16, 17):
            tifffile.imwrite(tmp_path / f"{well}_s1_z{z}.tif", np.zeros((4, 4), np.uint16))
    with pytest.raises(ValueError, match=r"look like 2 series, not one numbered series.*'A01_s1_z\*\.tif' \(3 files: "
                                         r"A01_s1_z15\.tif \.\.\. A01_s1_z17\.tif\), 'A02_s1_z\*\.tif'.*own folder.*"
                                         r"multi-page TIFF"):
        open_zstack(tmp_path)


@pytest.mark.parametrize("names", [
    ["DAPI_z1.tif", "DAPI_z2.tif", "GFP_z1.tif", "GFP_z2.tif"],  # a text token differs: two channels
    ["img_z1.tif", "img_z2.tif", "img_z2_copy.tif"],  # another pattern
    ["A01_z15.tif", "A01_z16.tif", "A02_z17.tif"],  # a field change in the middle of a series
    ["t1_z1.tif", "t1_z2.tif", "t2_z1.tif", "t2_z2.tif", "t3_z1.tif"],
])
def test_names_that_are_not_one_series_are_refused(tmp_path, names):
    for n in names:
        tifffile.imwrite(tmp_path / n, np.zeros((4, 4), np.uint16))
    with pytest.raises(ValueError, match="series, not one numbered series.*Open one series at a time"):
        open_zstack(tmp_path)


@pytest.mark.parametrize("names", [
    ["img_001.tif", "img_002.tif", "img_010.tif"],
    ["plane_z0.tif", "plane_z1.TIF", "Plane_z2.tiff"],  # case and suffix aside
    ["run3_z1_5um.tif", "run3_z2_10um.tif", "run3_z3_15um.tif"],  # numbers that change together: one series
    ["only.tif"],
])
def test_one_numbered_series_still_opens_in_natural_order(tmp_path, names):
    for i, n in enumerate(names):
        tifffile.imwrite(tmp_path / n, np.full((4, 4), i, np.uint16))
    arr, meta = _no_warning(open_zstack_with_metadata, tmp_path)
    assert arr.shape == (len(names), 4, 4) and meta.extra["files"] == names
    assert arr[:, 0, 0].compute().tolist() == list(range(len(names)))


# ------------------------------------------------------------------------------ two files for one plane


def test_two_files_for_one_plane_drop_that_field_naming_both(tmp_path, scheduler, capsys):
    """A prefixed copy beside the per-plane folder (the same field, channel and plane twice) costs its field only;
    the other channel is not affected, and ``linblur focus`` names the field and both files."""
    from napari_linblur.cli.main import main

    plate = _plate(tmp_path / "plate")
    sub = plate / "BBBC006_v1_images_z_16"
    sub.mkdir()
    copy = sub / f"mcf-z-stacks-03212011_a02_s1_w1{UUID}.tif"
    tifffile.imwrite(copy, np.zeros(SHAPE, np.uint16))
    with pytest.warns(UserWarning, match=r"1 well/site field\(s\) left out, they have two files for one plane: "
                                         r"a02_s1 w1 plane 16: .*and .*BBBC006_v1_images_z_16"):
        arr, meta = open_zstack_with_metadata(plate, channel="w1")
    assert arr.shape == (1, 3) + SHAPE and meta.extra["fields"] == ["a01_s1"]
    assert list(meta.extra["duplicate_fields"]) == ["a02_s1"] and meta.extra["dropped_fields"] == {}
    assert str(copy) in meta.extra["duplicate_fields"]["a02_s1"][0]
    assert arr[0, :, 0, 0].compute().tolist() == [_value("a01", 1, 1, z) for z in (15, 16, 17)]
    arr2, meta2 = _no_warning(open_zstack_with_metadata, plate, channel="w2")  # the copy is w1: w2 is whole
    assert arr2.shape == (2, 3) + SHAPE and meta2.extra["duplicate_fields"] == {}

    with pytest.warns(UserWarning, match="two files for one plane"):
        assert main(["focus", str(plate), "--channel", "w1", "--method", "brenner", "--scheduler", scheduler,
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "[duplicate fields] 1 field(s) left out: a02_s1 (two files for w1 plane 16:" in out


def test_when_every_field_has_a_duplicate_the_error_names_them(tmp_path):
    plate = _plate(tmp_path / "plate", fields=(("a01", 1),), channels=(1,))
    sub = plate / "BBBC006_v1_images_z_15"
    sub.mkdir()
    tifffile.imwrite(sub / f"mcf-z-stacks-03212011_a01_s1_w1{UUID}.tif", np.zeros(SHAPE, np.uint16))
    with pytest.raises(ValueError, match=r"every well/site field has two files for one plane, so none can be read: "
                                         r"a01_s1 w1 plane 15: .*; remove or move the copies"):
        open_zstack(plate)
