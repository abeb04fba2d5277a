"""Tests for napari_linblur.io: readers (zarr, OME-Zarr 0.4/0.5, TIFF, folders, BBBC006) and the writer."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_linblur.io.bbbc006 import parse_bbbc006_name
from napari_linblur.io.omezarr import auto_pyramid_levels, write_ome_zarr
from napari_linblur.io.readers import open_zstack, open_zstack_with_metadata

REAL = Path(
    "/work/shared/data/00_mcf-z-stacks-03212011_k06_s2_w12667264a-6432-4f7e-bf58-625a1319a1c9.tif"
)
UUID = "2667264a-6432-4f7e-bf58-625a1319a1c9"
needs_real = pytest.mark.skipif(not REAL.exists(), reason="real BBBC006 sample not available")


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------- BBBC006


@needs_real
def test_real_bbbc006_file():
    arr, meta = open_zstack_with_metadata(REAL)
    assert isinstance(arr, da.Array)
    assert arr.shape == (1, 520, 696) and arr.dtype == np.uint16
    assert meta.axes == "zyx"
    assert meta.extra["well"] == "k06" and meta.extra["site"] == 2
    assert meta.extra["channel"] == "w1" and meta.extra["z"] == 0
    assert meta.scale == (2.0, 0.65, 0.65)
    img = arr.compute()
    ref = tifffile.imread(REAL)
    np.testing.assert_array_equal(img[0], ref)
    assert img.max() > img.min()
    assert open_zstack(REAL, channel="w1").shape == (1, 520, 696)
    for same in ("1", "W1", 0, -1):  # as a BBBC006 folder accepts them
        assert open_zstack(REAL, channel=same).shape == (1, 520, 696), same
    for other in ("w2", "2", 1):
        with pytest.raises(ValueError, match="only channel is 'w1'"):
            open_zstack(REAL, channel=other)


def test_parse_bbbc006_names():
    r = parse_bbbc006_name(f"12_mcf-z-stacks-03212011_p24_s1_w2{UUID}.tif")
    assert (r.well, r.site, r.channel, r.z, r.uuid) == ("p24", 1, "w2", 12, UUID)
    r = parse_bbbc006_name(f"BBBC006_v1_images_z_33/mcf-z-stacks-03212011_a01_s2_w1{UUID}.tif")
    assert (r.field, r.z) == ("a01_s2", 33)
    with pytest.raises(ValueError, match="not a BBBC006"):
        parse_bbbc006_name("hello.tif")


def _prefix_layout(root: Path, planes=(0, 1, 2), channels=(1, 2), fields=(("a01", 1), ("k06", 2))):
    for z in planes:
        for w in channels:
            for well, s in fields:
                shutil.copy(REAL, root / f"{z:02d}_mcf-z-stacks-03212011_{well}_s{s}_w{w}{UUID}.tif")


@needs_real
def test_bbbc006_prefix_layout(tmp_path):
    _prefix_layout(tmp_path)
    arr, meta = open_zstack_with_metadata(tmp_path)
    assert arr.shape == (2, 2, 3, 520, 696)
    assert meta.axes == "pczyx" and meta.channel_names == ["w1", "w2"]
    assert meta.extra["fields"] == ["a01_s1", "k06_s2"]
    assert meta.extra["planes"] == [0, 1, 2]
    assert meta.scale[-3:] == (2.0, 0.65, 0.65)
    one, m1 = open_zstack_with_metadata(tmp_path, channel="w2")
    assert one.shape == (2, 3, 520, 696) and m1.axes == "pzyx" and m1.channel_names == ["w2"]
    assert open_zstack(tmp_path, channel=0).shape == (2, 3, 520, 696)
    np.testing.assert_array_equal(one[1, 2].compute(), tifffile.imread(REAL))
    with pytest.raises(ValueError, match="w3"):
        open_zstack(tmp_path, channel="w3")


@needs_real
def test_bbbc006_subset_of_planes_sits_at_its_depth(tmp_path):
    # planes 14-16 lie 28-32 µm down the stack (2 µm apart), not at its top: two subsets overlay where they were taken
    _prefix_layout(tmp_path, planes=(14, 15, 16), channels=(1,), fields=(("k06", 2),))
    arr, meta = open_zstack_with_metadata(tmp_path)
    assert meta.extra["planes"] == [14, 15, 16] and meta.translate == (0.0, 0.0, 28.0, 0.0, 0.0)
    one, m1 = open_zstack_with_metadata(tmp_path / f"15_mcf-z-stacks-03212011_k06_s2_w1{UUID}.tif")
    assert m1.translate == (30.0, 0.0, 0.0) and m1.scale[0] == 2.0
    assert open_zstack_with_metadata(REAL)[1].translate is None  # plane 0: the origin


@needs_real
def test_a_bbbc006_plane_that_is_a_broken_link_is_named_not_dropped(tmp_path):
    """A plane file that is a broken symbolic link made its plane vanish from the stack without a word (the in-focus
    plane 16 gone, 'best plane: 17'); its field is now left out with the warning naming the file."""
    _prefix_layout(tmp_path, planes=(14, 15, 17), channels=(1,), fields=(("k06", 2), ("a01", 1)))
    _prefix_layout(tmp_path, planes=(16,), channels=(1,), fields=(("a01", 1),))
    broken = tmp_path / f"16_mcf-z-stacks-03212011_k06_s2_w1{UUID}.tif"
    broken.symlink_to(tmp_path / "nowhere" / "x.tif")
    with pytest.warns(UserWarning, match=r"1 of 2 well/site fields left out.*k06_s2 \(16_mcf.*No such file"):
        arr, meta = open_zstack_with_metadata(tmp_path)
    assert meta.extra["fields"] == ["a01_s1"] and meta.extra["planes"] == [14, 15, 16, 17]
    assert "k06_s2" in meta.extra["mismatched_fields"]


@needs_real
def test_bbbc006_per_plane_folders(tmp_path):
    for z in range(3):
        sub = tmp_path / f"BBBC006_v1_images_z_{z:02d}"
        sub.mkdir()
        for w in (1, 2):
            shutil.copy(REAL, sub / f"mcf-z-stacks-03212011_k06_s2_w{w}{UUID}.tif")
    arr, meta = open_zstack_with_metadata(tmp_path)
    assert arr.shape == (1, 2, 3, 520, 696) and meta.axes == "pczyx"
    assert meta.extra["planes"] == [0, 1, 2] and meta.extra["wells"] == ["k06"]
    assert open_zstack(tmp_path, channel="w1").shape == (1, 3, 520, 696)


@needs_real
def test_bbbc006_missing_plane_and_channel(tmp_path):
    _prefix_layout(tmp_path)
    (tmp_path / f"01_mcf-z-stacks-03212011_k06_s2_w2{UUID}.tif").unlink()
    # the field with a hole is dropped with a warning, the complete field is still read; a hole in w2 never
    # blocks w1 (tests/test_io_plates.py covers the rules)
    with pytest.warns(UserWarning, match="k06_s2 lacks w2 plane 1"):
        arr, meta = open_zstack_with_metadata(tmp_path)
    assert meta.extra["fields"] == ["a01_s1"] and meta.extra["dropped_fields"] == {"k06_s2": [1]}
    assert open_zstack(tmp_path, channel="w1").shape == (2, 3, 520, 696)
    d2 = tmp_path / "onlyw1"
    d2.mkdir()
    _prefix_layout(d2, channels=(1,))
    shutil.copy(REAL, d2 / f"00_mcf-z-stacks-03212011_a01_s1_w2{UUID}.tif")
    with pytest.raises(ValueError, match="missing: well a01 site 1 channel w2 plane 01"):
        open_zstack(d2)


# ------------------------------------------------------------------------------------------------- TIFF


def test_multipage_tiff_lazy_roundtrip(tmp_path):
    x = np.arange(5 * 16 * 20, dtype=np.uint16).reshape(5, 16, 20)
    p = tmp_path / "stack.tif"
    tifffile.imwrite(p, x)
    arr, meta = open_zstack_with_metadata(p)
    assert meta.axes == "zyx" and arr.chunks[0] == (1,) * 5  # one page per chunk, nothing read yet
    np.testing.assert_array_equal(arr.compute(), x)
    np.testing.assert_array_equal(arr[3].compute(), x[3])


def test_imagej_hyperstack_axes_and_scale(tmp_path):
    x = np.arange(3 * 2 * 8 * 9, dtype=np.uint16).reshape(3, 2, 8, 9)  # ZCYX
    p = tmp_path / "ij.tif"
    tifffile.imwrite(p, x, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "ZCYX", "spacing": 1.5, "unit": "um"})
    arr, meta = open_zstack_with_metadata(p)
    assert meta.axes == "czyx" and arr.shape == (2, 3, 8, 9)
    assert meta.scale == pytest.approx((1.0, 1.5, 0.5, 0.5))
    assert meta.units[-1] == "micrometer"
    np.testing.assert_array_equal(arr.compute(), x.transpose(1, 0, 2, 3))
    np.testing.assert_array_equal(open_zstack(p, channel=1).compute(), x[:, 1])


def test_ome_tiff_channel_names(tmp_path):
    x = np.zeros((2, 3, 8, 8), np.uint8)
    p = tmp_path / "o.ome.tif"
    tifffile.imwrite(p, x, ome=True, metadata={"axes": "CZYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3,
                                               "PhysicalSizeZ": 1.0, "Channel": {"Name": ["dapi", "gfp"]}})
    arr, meta = open_zstack_with_metadata(p, channel="gfp")
    assert arr.shape == (3, 8, 8) and meta.axes == "zyx" and meta.channel_names == ["gfp"]
    assert meta.scale == pytest.approx((1.0, 0.3, 0.3))


def test_tiff_folder_natural_order_and_shape_error(tmp_path):
    for z in (0, 1, 2, 10):
        tifffile.imwrite(tmp_path / f"plane_z{z}.tif", np.full((6, 7), z, np.uint16))
    # macOS's AppleDouble sidecars (on USB drives and network shares) are not planes: the folder read as 2 series
    for z in (0, 1):
        (tmp_path / f"._plane_z{z}.tif").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    arr = open_zstack(tmp_path)
    assert arr.shape == (4, 6, 7)
    assert arr[:, 0, 0].compute().tolist() == [0, 1, 2, 10]
    tifffile.imwrite(tmp_path / "plane_z11.tif", np.zeros((6, 8), np.uint16))
    with pytest.raises(ValueError, match="inconsistent planes.*plane_z11"):
        open_zstack(tmp_path)


@needs_real
def test_truncated_tiff_names_file(tmp_path):
    bad = tmp_path / "cut.tif"
    raw = REAL.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="cut.tif"):
        open_zstack(bad).compute()
    tiny = tmp_path / "tiny.tif"
    tiny.write_bytes(raw[:10])
    with pytest.raises(ValueError, match="tiny.tif"):
        open_zstack(tiny)


def test_a_bbbc006_channel_number_is_not_taken_for_an_index(tmp_path):
    """With channels w1, w2 the index 1 would be w2 while the user may mean w1: refused, asking for the name;
    the names and the unambiguous index 0 work."""
    x = np.arange(2 * 3 * 8 * 8, dtype=np.uint16).reshape(2, 3, 8, 8)
    p = write_ome_zarr(tmp_path / "w.zarr", x, axes="czyx", channel_names=["w1", "w2"])
    with pytest.raises(ValueError, match=r"channel=1 is ambiguous.*'w2'.*'w1' is numbered 1.*name"):
        open_zstack(p, channel=1)
    np.testing.assert_array_equal(open_zstack(p, channel="w2").compute(), x[1])
    np.testing.assert_array_equal(open_zstack(p, channel="1").compute(), x[0])
    np.testing.assert_array_equal(open_zstack(p, channel=0).compute(), x[0])


def test_missing_and_unknown(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nope"):
        open_zstack(tmp_path / "nope.zarr")
    monkeypatch.chdir(tmp_path)
    tifffile.imwrite(tmp_path / "p0.tif", np.zeros((8, 8), np.uint16))
    with pytest.raises(ValueError, match="path is empty"):  # it used to open the current folder's TIFF series
        open_zstack("")
    # no pixels, or values that are not intensities: refused at open for every reader (napari's made layers of them)
    from napari_linblur._napari._reader import read_zstack

    zarr.open_array(str(tmp_path / "zero.zarr"), mode="w", shape=(2, 0, 8, 8), dtype="u2")
    zarr.open_array(str(tmp_path / "cplx.zarr"), mode="w", shape=(2, 8, 8), dtype="c8")
    # zarr v2 and v3 metadata in one folder: the v3 is read (its chunks may not exist: zeros), and that is said
    zarr.open_array(str(tmp_path / "both.zarr"), mode="w", shape=(2, 8, 8), dtype="u2", zarr_format=2)[:] = 5
    zarr.open_array(str(tmp_path / "v3.zarr"), mode="w", shape=(2, 4, 4), dtype="f4", zarr_format=3)
    (tmp_path / "both.zarr" / "zarr.json").write_bytes((tmp_path / "v3.zarr" / "zarr.json").read_bytes())
    with pytest.warns(UserWarning, match=r"both.zarr: holds both zarr v3 metadata \(zarr.json\), which is read"):
        assert open_zstack(tmp_path / "both.zarr").shape == (2, 4, 4)
    for name, says in (("zero.zarr", r"the image is empty \(shape \(2, 0, 8, 8\)"),
                       ("cplx.zarr", "holds complex64 values, not intensities")):
        for read in (open_zstack, read_zstack):
            with pytest.raises(ValueError, match=says):
                read(tmp_path / name)
    (tmp_path / "a.png").write_bytes(b"\x89PNG....")
    with pytest.raises(ValueError, match="unknown format.*accepted formats.*OME-Zarr"):
        open_zstack(tmp_path / "a.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="accepted formats"):
        open_zstack(tmp_path / "empty")
    # a collection of images (a `linblur synth` dataset): the error names one to open
    root = zarr.open_group(str(tmp_path / "ds.zarr"), mode="w")
    for name in ("field_000", "field_001"):
        root.create_group(name).create_array("0", shape=(2, 8, 8), dtype="uint8")
    with pytest.raises(ValueError, match=r"a zarr group of 2 groups \(field_000, field_001\).*ds.zarr/field_000"):
        open_zstack(tmp_path / "ds.zarr")


# ------------------------------------------------------------------------------------------------- zarr


def test_plain_zarr_array_and_single_array_group(tmp_path):
    x = np.random.default_rng(0).random((4, 10, 12)).astype(np.float32)
    z = zarr.create_array(str(tmp_path / "plain.zarr"), shape=x.shape, dtype=x.dtype, chunks=(1, 10, 12))
    z[:] = x
    arr, meta = open_zstack_with_metadata(tmp_path / "plain.zarr")
    assert meta.axes == "zyx"
    np.testing.assert_array_equal(arr.compute(), x)
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("data", shape=(10, 12), dtype="uint8")[:] = 7
    arr = open_zstack(tmp_path / "g.zarr")
    assert arr.shape == (1, 10, 12) and int(arr.max().compute()) == 7


def test_ome_zarr_05_roundtrip(tmp_path):
    x = np.random.default_rng(1).integers(0, 4000, (2, 3, 130, 140)).astype(np.uint16)
    p = write_ome_zarr(tmp_path / "img.ome.zarr", x, axes="czyx", scale=(1.0, 2.0, 0.65, 0.65),
                       channel_names=["w1", "w2"], attrs={"recipe": {"seed": 3}})
    arr, meta = open_zstack_with_metadata(p)
    assert meta.axes == "czyx" and meta.scale == (1.0, 2.0, 0.65, 0.65)
    assert meta.units == (None, "micrometer", "micrometer", "micrometer")
    assert meta.channel_names == ["w1", "w2"] and meta.extra["ngff_version"] == "0.5"
    assert meta.extra["ngff"]["recipe"] == {"seed": 3}
    np.testing.assert_array_equal(arr.compute(), x)
    np.testing.assert_array_equal(open_zstack(p, channel="w2").compute(), x[1])
    g = zarr.open_group(str(p), mode="r")
    assert g.metadata.zarr_format == 3
    ms = g.attrs["ome"]["multiscales"][0]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1"]  # 130 -> 65 (>= 64) -> stop
    assert g["1"].shape == (2, 3, 65, 70)
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [1.0, 2.0, 1.3, 1.3]
    assert list(g["0"].metadata.dimension_names) == ["c", "z", "y", "x"]
    # level 1 is the 2x2 mean, rounded
    exp = np.rint(x[..., :130, :140].reshape(2, 3, 65, 2, 70, 2).mean(axis=(3, 5)))
    np.testing.assert_array_equal(g["1"][:], exp.astype(np.uint16))


def test_ome_zarr_04_v2_reads(tmp_path):
    x = np.arange(3 * 20 * 30, dtype=np.uint16).reshape(3, 20, 30)
    g = zarr.open_group(str(tmp_path / "v04.zarr"), mode="w", zarr_format=2)
    g.create_array("s0", shape=x.shape, dtype=x.dtype, chunks=(1, 20, 30))[:] = x
    g.create_array("s1", shape=(3, 10, 15), dtype=x.dtype, chunks=(1, 10, 15))[:] = 0
    g.attrs.update({
        "multiscales": [{
            "version": "0.4",
            "axes": [{"name": "z", "type": "space", "unit": "micrometer"},
                     {"name": "y", "type": "space", "unit": "micrometer"},
                     {"name": "x", "type": "space", "unit": "micrometer"}],
            "datasets": [
                {"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 0.5, 0.5]}]},
                {"path": "s1", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 1.0, 1.0]}]},
            ],
        }],
        "omero": {"channels": [{"label": "dapi"}]},
    })
    assert (tmp_path / "v04.zarr" / ".zattrs").exists()
    arr, meta = open_zstack_with_metadata(tmp_path / "v04.zarr")
    assert meta.axes == "zyx" and meta.scale == (2.0, 0.5, 0.5)
    assert meta.extra["ngff_version"] == "0.4" and meta.extra["level"] == "s0"
    np.testing.assert_array_equal(arr.compute(), x)


def test_corrupt_zarr_chunk_names_store_and_chunk(tmp_path):
    x = np.random.default_rng(2).integers(0, 255, (3, 64, 64)).astype(np.uint8)
    p = write_ome_zarr(tmp_path / "c.zarr", x, pyramid_levels=1)
    chunk = p / "0" / "c" / "1" / "0" / "0"
    assert chunk.is_file()
    chunk.write_bytes(b"this is not zstd data at all")
    arr = open_zstack(p)
    np.testing.assert_array_equal(arr[0].compute(), x[0])  # other chunks still fine
    with pytest.raises(ValueError, match=r"corrupt or unreadable zarr chunk 1\.0\.0 of .*c\.zarr/0"):
        arr[1].compute()


# ----------------------------------------------------------------------------------------------- writer


def test_writer_dask_input_and_byte_identical(tmp_path):
    x = np.random.default_rng(3).random((4, 96, 100)).astype(np.float32)
    calls = []
    a = write_ome_zarr(tmp_path / "a.zarr", da.from_array(x, chunks=(2, 48, 50)), scale=(2, 0.65, 0.65),
                       progress=lambda d, t: calls.append((d, t)))
    b = write_ome_zarr(tmp_path / "b.zarr", x, scale=(2, 0.65, 0.65))
    assert calls[-1][0] == calls[-1][1] and len(calls) == calls[-1][1]
    assert _files(a) == _files(b)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in _files(a))
    np.testing.assert_array_equal(open_zstack(a).compute(), x)


def test_writer_atomic_on_failure(tmp_path):
    def boom(block):
        if block[0, 0, 0] > 0:
            raise RuntimeError("chunk exploded")
        return block

    x = da.from_array(np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 32, 32), np.float32),
                      chunks=(1, 32, 32)).map_blocks(boom)
    target = tmp_path / "out.zarr"
    with pytest.raises(RuntimeError, match="chunk exploded"):
        write_ome_zarr(target, x)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temp leftovers

    # overwrite=True: a failure leaves the previous output intact
    good = write_ome_zarr(target, np.ones((2, 32, 32), np.float32))
    before = {f: (good / f).read_bytes() for f in _files(good)}
    with pytest.raises(RuntimeError):
        write_ome_zarr(target, x, overwrite=True)
    assert {f: (good / f).read_bytes() for f in _files(good)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


def test_writer_warns_about_a_killed_writes_leftover_and_keeps_it(tmp_path):
    # a real write killed with SIGKILL (as by the OOM killer or a cluster time limit) cannot clean up after itself
    import signal
    import subprocess
    import sys
    import time

    target = tmp_path / "out.zarr"
    script = (
        "import time, numpy as np, dask.array as da\n"
        "from napari_linblur.io.omezarr import write_ome_zarr\n"
        "def slow(b):\n    time.sleep(0.5)\n    return b\n"
        "x = da.ones((40, 32, 32), dtype='float32', chunks=(1, 32, 32)).map_blocks(slow)\n"
        f"write_ome_zarr({str(target)!r}, x)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".out.zarr.tmp-*/**/zarr.json")) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (left,) = list(tmp_path.glob(".out.zarr.tmp-*"))
    assert not target.exists()
    with pytest.warns(UserWarning, match=r"1 earlier write.*left behind.*\.out\.zarr\.tmp-.*Delete them"):
        out = write_ome_zarr(target, np.ones((2, 32, 32), np.float32))
    np.testing.assert_array_equal(open_zstack(out).compute(), np.ones((2, 32, 32)))
    assert left.is_dir()  # never deleted: another process could be writing it
    with warnings.catch_warnings():  # an unrelated name draws no warning
        warnings.simplefilter("error")
        write_ome_zarr(tmp_path / "other.zarr", np.ones((2, 32, 32), np.float32))


@pytest.mark.parametrize("exchange", [True, False])
def test_overwrite_never_leaves_the_output_path_empty(tmp_path, monkeypatch, exchange):
    """--overwrite moved the old output aside and then renamed the new one in: a kill between the two renames left
    neither at the output path. On Linux the two are now exchanged in one step (renameat2); where that is not
    available the two renames remain, and the folder a kill would leave (.NAME.old-*) is named by the next write."""
    from napari_linblur.io import omezarr

    if not exchange:  # a system without renameat2: the two renames
        monkeypatch.setattr(omezarr, "_exchange", lambda a, b: False)
    target = tmp_path / "out.zarr"
    write_ome_zarr(target, np.zeros((2, 16, 16), np.float32))
    write_ome_zarr(target, np.ones((2, 16, 16), np.float32), overwrite=True)
    np.testing.assert_array_equal(open_zstack(target).compute(), np.ones((2, 16, 16)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]  # no .tmp- or .old- folder left
    aside = tmp_path / ".out.zarr.old-0123456789ab"  # what a kill between the two renames leaves
    shutil.copytree(target, aside)
    with pytest.warns(UserWarning, match=r"1 earlier version\(s\) of this output moved aside by an --overwrite"):
        write_ome_zarr(target, np.ones((2, 16, 16), np.float32), overwrite=True)
    assert aside.is_dir()  # named, never deleted


def test_writer_failure_with_writes_still_running_leaves_nothing(tmp_path):
    """A block that fails while other blocks are still being computed and written (threaded scheduler): the
    temporary folder is removed once, for good; no worker writes into it afterwards (it used to happen)."""
    import time

    def slow_or_boom(block):
        if block[0, 0, 0] == 1:
            raise RuntimeError("plane 1 exploded")
        time.sleep(0.05)
        return block

    x = da.from_array(np.arange(8, dtype=np.float32)[:, None, None] * np.ones((8, 64, 64), np.float32),
                      chunks=(1, 64, 64)).map_blocks(slow_or_boom)
    for _ in range(3):
        with pytest.raises(RuntimeError, match="plane 1 exploded"):
            write_ome_zarr(tmp_path / "o.zarr", x)
        time.sleep(0.3)  # give any straggling write the time to show up
        assert list(tmp_path.iterdir()) == []


def test_writer_computes_as_many_planes_at_once_as_the_scheduler_has_threads(tmp_path):
    """The threaded scheduler with 8 threads: 8 planes in flight at once, refilled as each is written (it used to
    be groups of 4, each waiting for its slowest plane); the output is the same as computed in one go."""
    import threading
    import time

    import dask

    lock = threading.Lock()
    running, most = [0], [0]

    def slow(block):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.3)
        with lock:
            running[0] -= 1
        return block * 2

    x = np.random.default_rng(5).random((16, 32, 32)).astype(np.float32)
    lazy = da.from_array(x, chunks=(1, 32, 32)).map_blocks(slow)
    with dask.config.set(scheduler="threads", num_workers=8):
        out = write_ome_zarr(tmp_path / "t.zarr", lazy, pyramid_levels=2)
    assert most[0] >= 6
    np.testing.assert_array_equal(open_zstack(out).compute(), x * 2)


def test_malformed_ome_zarr_metadata_is_a_clear_error(tmp_path):
    import json

    good = write_ome_zarr(tmp_path / "g.zarr", np.ones((2, 16, 16), np.uint16), pyramid_levels=1)
    meta = json.loads((good / "zarr.json").read_text())

    def variant(name, change):
        p = tmp_path / name
        shutil.copytree(good, p)
        m = json.loads(json.dumps(meta))
        change(m["attributes"]["ome"])
        (p / "zarr.json").write_text(json.dumps(m))
        return p

    cases = {
        "no multiscales": (variant("a.zarr", lambda o: o.update(multiscales=[])), "without a multiscales"),
        "no path": (variant("b.zarr", lambda o: o["multiscales"][0]["datasets"][0].pop("path")), "malformed"),
        "bad scale": (variant("c.zarr", lambda o: o["multiscales"][0]["datasets"][0]["coordinateTransformations"]
                              [0].update(scale=[1.0, 2.0])), "one value per axis"),
    }
    broken = tmp_path / "d.zarr"
    shutil.copytree(good, broken)
    (broken / "0" / "zarr.json").write_text("{ not json")
    cases["corrupt array metadata"] = (broken, "not valid JSON")
    for key, (path, says) in cases.items():
        with pytest.raises(ValueError, match=says) as err:
            open_zstack(path)
        assert path.name in str(err.value), key


def test_translation_round_trip_and_big_imagej_and_multi_position_tiffs(tmp_path):
    # OME-Zarr: the first pixel's position survives writing (every pyramid level), reading and channel selection
    data = np.random.default_rng(0).integers(0, 500, (2, 3, 64, 64)).astype(np.uint16)
    p = write_ome_zarr(tmp_path / "t.zarr", data, axes="czyx", scale=(1.0, 2.0, 0.5, 0.5),
                       translate=(0.0, 10.0, 100.0, 200.0), channel_names=["a", "b"], pyramid_levels=2)
    arr, meta = open_zstack_with_metadata(p, channel="b")
    assert meta.axes == "zyx" and meta.translate == (10.0, 100.0, 200.0) and meta.scale == (2.0, 0.5, 0.5)
    import json

    levels = json.loads((p / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]["datasets"]
    assert levels[1]["coordinateTransformations"][1]["translation"][-2:] == [100.25, 200.25]  # + half a pixel
    assert open_zstack_with_metadata(write_ome_zarr(tmp_path / "o.zarr", data[0]))[1].translate is None
    # an ImageJ file over 4 GB keeps all planes in one contiguous block behind a single page: read per plane
    st = np.arange(4 * 64 * 80, dtype=np.uint16).reshape(4, 64, 80)
    big = tmp_path / "big.tif"
    tifffile.imwrite(big, st, imagej=True, truncate=True, metadata={"axes": "ZYX"})
    lazy = open_zstack(big)
    assert lazy.chunks[0] == (1, 1, 1, 1)
    np.testing.assert_array_equal(lazy[2].compute(), st[2])
    # an OME-TIFF with one series per position: every position, along P (it used to read the first only)
    multi = tmp_path / "multi.ome.tif"
    with tifffile.TiffWriter(multi, ome=True) as tw:
        for i in range(3):
            tw.write(np.full((4, 32, 32), i, np.uint16), metadata={"axes": "ZYX", "Name": f"pos{i}"})
    arr, meta = open_zstack_with_metadata(multi)
    assert meta.axes == "pzyx" and arr.shape == (3, 4, 32, 32)
    assert [int(arr[i, 0, 0, 0].compute()) for i in range(3)] == [0, 1, 2]
    assert meta.extra["fields"] == ["pos0", "pos1", "pos2"]  # the <Image Name>s, as `linblur focus` reports them


def test_cut_multi_page_imagej_tiff_is_an_error_not_one_plane(tmp_path):
    st = np.random.default_rng(0).integers(0, 1000, (17, 64, 64)).astype(np.uint16)
    p = tmp_path / "s.tif"
    tifffile.imwrite(p, st, imagej=True, metadata={"axes": "ZYX"})
    raw = p.read_bytes()
    for frac in (0.3, 0.95):
        cut = tmp_path / f"cut{int(frac * 100)}.tif"
        cut.write_bytes(raw[: int(len(raw) * frac)])
        with pytest.raises(ValueError, match="announces 17 images but only 1"):
            open_zstack(cut)


def test_writer_refuses_existing_and_own_input(tmp_path):
    p = write_ome_zarr(tmp_path / "s.zarr", np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="already exists"):
        write_ome_zarr(p, np.zeros((2, 32, 32), np.uint8))
    src = open_zstack(p)
    with pytest.raises(ValueError, match="refusing to overwrite its own input"):
        write_ome_zarr(p, src + 1, overwrite=True, source_paths=[p])
    with pytest.raises(ValueError, match="refusing to overwrite its own input"):
        write_ome_zarr(p / "inner.zarr", src, source_paths=[p])
    # overwrite replaces atomically
    write_ome_zarr(p, np.full((2, 32, 32), 5, np.uint8), overwrite=True)
    assert int(open_zstack(p).max().compute()) == 5
    assert sorted(q.name for q in tmp_path.iterdir()) == ["s.zarr"]


def test_writer_validation():
    with pytest.raises(ValueError, match="axes"):
        write_ome_zarr("/tmp/never.zarr", np.zeros((2, 8, 8)), axes="yx")
    with pytest.raises(ValueError, match="scale"):
        write_ome_zarr("/tmp/never.zarr", np.zeros((2, 8, 8)), scale=(1, 1))
    with pytest.raises(ValueError, match="channel_names"):
        write_ome_zarr("/tmp/never.zarr", np.zeros((2, 8, 8)), channel_names=["a", "b"])
    assert auto_pyramid_levels((520, 696)) == 4
    assert not Path("/tmp/never.zarr").exists()


def test_written_ome_zarr_validates_and_pickles(tmp_path):
    import pickle

    models = pytest.importorskip("ome_zarr_models.v05.image")
    p = write_ome_zarr(tmp_path / "v.ome.zarr", np.ones((2, 3, 130, 140), np.uint16), axes="czyx",
                       scale=(1, 2, 0.65, 0.65), channel_names=["a", "b"])
    models.Image.from_zarr(zarr.open_group(str(p), mode="r"))  # raises if not valid NGFF 0.5
    arr = pickle.loads(pickle.dumps(open_zstack(p)))  # dask.distributed needs picklable graphs
    assert int(arr.sum().compute()) == 2 * 3 * 130 * 140


def test_atomic_reports_are_strict_json_and_leave_nothing_behind(tmp_path):
    import json

    from napari_linblur.io.atomic import write_json_atomic, write_text_atomic

    p = write_json_atomic(tmp_path / "r.json", {"mae": float("nan"), "rows": [1.5, float("inf")], "n": 2})
    strict = json.loads(p.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON token {c}"))
    assert strict == {"mae": None, "rows": [1.5, None], "n": 2}
    # a folder or a missing folder is a clear error, and an existing file is replaced only when complete
    with pytest.raises(ValueError, match="is a folder"):
        write_text_atomic(tmp_path, "x")
    with pytest.raises(ValueError, match="does not exist"):
        write_text_atomic(tmp_path / "no" / "f.txt", "x")
    keep = write_text_atomic(tmp_path / "keep.txt", "old")
    with pytest.raises(UnicodeEncodeError):  # fails half-way through the write
        write_text_atomic(keep, "new" * 1000 + "\ud800")
    assert keep.read_text() == "old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["keep.txt", "r.json"]


def test_writer_names_a_file_in_the_way_of_the_output_folder(tmp_path):
    """An output below a file (``f.zarr/zarr.json/x.zarr``, ``notes.txt/o.zarr``) is refused before anything is
    written, naming the output and the file in the way, not with pathlib's bare ``[Errno 17] File exists``."""
    store = write_ome_zarr(tmp_path / "f.zarr", np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"zarr\.json is a file") as err:
        write_ome_zarr(store / "zarr.json" / "x.zarr", np.zeros((2, 8, 8), np.uint8))
    assert "x.zarr" in str(err.value)
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    with pytest.raises(ValueError, match="notes.txt is a file") as err:
        write_ome_zarr(afile / "deep" / "o.zarr", np.zeros((2, 8, 8), np.uint8))
    assert "o.zarr" in str(err.value)
    assert afile.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["f.zarr", "notes.txt"]


@pytest.mark.parametrize("attrs", [{"x": object()}, {"x": float("nan")}, {"x": [1.0, float("inf")]},
                                   {"x": {(1, 2): 3}}, ["not", "a", "mapping"]])
def test_writer_refuses_attrs_that_are_not_strict_json(tmp_path, attrs):
    """``attrs`` go into ``zarr.json``: a value JSON cannot hold, or NaN/inf (bare ``NaN`` is not JSON), is refused
    up front naming ``attrs``, and nothing is written."""
    with pytest.raises(ValueError, match="attrs"):
        write_ome_zarr(tmp_path / "a.zarr", np.zeros((2, 8, 8), np.uint8), attrs=attrs)
    assert list(tmp_path.iterdir()) == []


def _tree(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


def test_overwrite_replaces_only_a_whole_store_napari_linblur_wrote(tmp_path, capsys):
    """``--overwrite`` used to replace any folder with zarr metadata: an array of another dataset
    (``image.ome.zarr/0``), or a store another tool wrote. Now an output is never written inside a store, and
    ``overwrite`` replaces only an earlier napari-linblur output; what is refused stays byte-identical."""
    from napari_linblur.cli.main import main

    stack = np.arange(2 * 16 * 16, dtype=np.float32).reshape(2, 16, 16)
    ours = write_ome_zarr(tmp_path / "ours.ome.zarr", stack, pyramid_levels=1)
    foreign = tmp_path / "foreign.zarr"
    zarr.create_array(store=str(foreign), shape=(2, 16, 16), dtype="float32", chunks=(1, 16, 16))[:] = stack
    before = {p: _tree(p) for p in (Path(ours), foreign)}
    # inside a store: refused with or without overwrite, by the API and by the command line
    for target, overwrite in ((Path(ours) / "0", True), (Path(ours) / "new.zarr", False)):
        with pytest.raises(ValueError, match="refusing to write inside the zarr store"):
            write_ome_zarr(target, stack, overwrite=overwrite)
    tif = tmp_path / "s.tif"
    tifffile.imwrite(tif, stack)
    assert main(["synth", str(Path(ours) / "0"), "--overwrite", "--shape", "32", "32", "-q", "--no-progress"]) == 2
    assert "inside the zarr store" in capsys.readouterr().err
    # a store another tool wrote: never replaced
    with pytest.raises(ValueError, match="not written by napari-linblur"):
        write_ome_zarr(foreign, stack, overwrite=True)
    assert {p: _tree(p) for p in (Path(ours), foreign)} == before
    # an earlier output of ours: replaced as asked
    again = write_ome_zarr(ours, stack[::-1], overwrite=True, pyramid_levels=1)
    np.testing.assert_array_equal(np.asarray(open_zstack(again)).reshape(stack.shape), stack[::-1])


def test_a_chunk_missing_from_an_output_of_ours_is_an_error_not_a_plane_of_zeros(tmp_path):
    """The writer writes every chunk (an all-zero plane too), so a chunk missing from its store is damage: reading
    it names the store and the chunk (it used to read as zeros, and a focus curve scored that plane 0). In another
    tool's store a missing chunk stays the fill value, as zarr defines."""
    import os

    stack = np.ones((3, 16, 16), np.float32)
    stack[1] = 0.0
    ours = Path(write_ome_zarr(tmp_path / "ours.ome.zarr", stack, pyramid_levels=1))
    assert sorted(os.listdir(ours / "0" / "c")) == ["0", "1", "2"]  # the zero plane's chunk is there
    np.testing.assert_array_equal(np.asarray(open_zstack(ours)).reshape(stack.shape), stack)
    os.remove(ours / "0" / "c" / "1" / "0" / "0")
    with pytest.raises(ValueError, match=r"chunk 1\.0\.0 is missing from the store"):
        np.asarray(open_zstack(ours))
    assert float(np.asarray(open_zstack(ours)[..., 0, :, :]).max()) == 1.0  # the other planes still read

    foreign = tmp_path / "foreign.zarr"
    zarr.create_array(store=str(foreign), shape=(3, 16, 16), dtype="float32", chunks=(1, 16, 16))[:] = stack
    assert not (foreign / "c" / "1" / "0" / "0").exists()  # zarr's default: empty chunks are not written
    np.testing.assert_array_equal(np.asarray(open_zstack(foreign)).reshape(stack.shape), stack)


def test_damaged_zarr_array_metadata_is_a_clear_error(tmp_path):
    """Chunks of 0 along an axis, or a shape of 10^12 planes, used to end in ZeroDivisionError or MemoryError."""
    import json

    for name, change in (("zero", {"chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [0, 16, 16]}}}),
                         ("huge", {"shape": [10**12, 16, 16]})):
        p = Path(write_ome_zarr(tmp_path / f"{name}.ome.zarr", np.ones((2, 16, 16), np.float32), pyramid_levels=1))
        meta = json.loads((p / "0" / "zarr.json").read_text())
        meta.update(change)
        (p / "0" / "zarr.json").write_text(json.dumps(meta))
        with pytest.raises(ValueError, match=f"{name}.ome.zarr/0"):
            open_zstack(p)


@pytest.mark.parametrize("edit, says", [
    (lambda ms: ms["datasets"][0]["coordinateTransformations"][0].update(scale=[0.0, 0.0, 0.0]),
     "every value must be positive and finite"),
    (lambda ms: ms["datasets"][0]["coordinateTransformations"][0].update(scale=[1.0, "a", 1.0]),
     "is not a list of numbers"),
    (lambda ms: ms["axes"][1].update(name="x"), "name the axis 'x' twice"),
])
def test_damaged_ngff_transformations_and_axes_name_the_store(tmp_path, edit, says):
    """A scale of 0 (accepted, then refused later without naming the file), a non-numeric scale, an axis named twice
    (reported as 'planes must be at least 4x4'): each is a ValueError naming the store and the field."""
    import json

    p = Path(write_ome_zarr(tmp_path / "d.ome.zarr", np.ones((2, 16, 16), np.float32), pyramid_levels=1))
    meta = json.loads((p / "zarr.json").read_text())
    edit(meta["attributes"]["ome"]["multiscales"][0])
    (p / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=says) as err:
        open_zstack(p)
    assert "d.ome.zarr" in str(err.value)


def test_an_output_folder_that_cannot_be_written_is_named_not_the_hidden_temp_folder(tmp_path, monkeypatch):
    """A folder the writer may not create anything in (read-only, immutable; simulated here, since tests may run
    as root, for whom permissions do not apply) is named with the output, not as '.out.zarr.tmp-…'."""
    real_mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if self.name.startswith(".out.zarr.tmp-"):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(ValueError) as err:
        write_ome_zarr(tmp_path / "out.zarr", np.ones((2, 8, 8), np.float32))
    assert str(err.value) == (f"cannot write {(tmp_path / 'out.zarr').resolve()}: Permission denied (nothing can be "
                              f"created in {tmp_path.resolve()})")
    assert list(tmp_path.iterdir()) == []


def test_write_ome_zarr_refuses_empty_unknown_and_mistyped_arguments_by_name(tmp_path):
    """Each was a bare conversion error (or, for channel names given as one string, a silent split into letters)."""
    lazy = da.ones((4, 8, 8))
    cases = [
        (np.ones((0, 8, 8)), {}, ValueError, "is empty"),
        (lazy[lazy[:, 0, 0] > 0], {}, ValueError, "unknown sizes"),
        (np.ones((2, 8, 8)), {"axes": 3}, TypeError, "axes must be a string"),
        (np.ones((2, 8, 8)), {"scale": ["a", 1, 1]}, ValueError, "scale: need 3 numbers"),
        (np.ones((2, 8, 8)), {"axes": "cyx", "channel_names": "ab"}, TypeError, "list of names"),
    ]
    for data, kwargs, kind, says in cases:
        with pytest.raises(kind, match=says):
            write_ome_zarr(tmp_path / "w.zarr", data, **kwargs)
        assert not (tmp_path / "w.zarr").exists()


def test_a_report_names_the_temporary_files_a_killed_write_left(tmp_path):
    """`linblur focus --json/--csv` or `evaluate` killed while writing left `.NAME.XXXX.tmp` files that no later run
    mentioned; the next write of that file names them (and never deletes them: another write may be running)."""
    from napari_linblur.io.atomic import write_json_atomic

    left = tmp_path / ".focus.json.k1ll3d.tmp"
    left.write_text("{")
    with pytest.warns(UserWarning, match=r"focus.json: 1 temporary file\(s\) of an earlier write that was killed"):
        write_json_atomic(tmp_path / "focus.json", {"a": 1})
    assert left.exists() and (tmp_path / "focus.json").read_text().startswith("{")
    with warnings.catch_warnings():  # another file's name draws no warning
        warnings.simplefilter("error")
        write_json_atomic(tmp_path / "other.json", {"a": 1})


def test_another_name_of_the_input_store_is_still_the_input(tmp_path):
    """On a case-insensitive file system (macOS, Windows) `In.zarr` is `in.zarr`; names alone said they differ, so
    `linblur deblur In.zarr in.zarr --overwrite` could replace its input. Identity (samefile) decides now; a second
    name of one folder (a symbolic link, as here) stands in for the other spelling."""
    from napari_linblur.io.omezarr import _conflicts, path_within

    src = write_ome_zarr(tmp_path / "in.zarr", np.zeros((2, 8, 8), np.uint16), axes="zyx")
    alias = tmp_path / "In.zarr"
    alias.symlink_to(src)
    assert path_within(alias, src) and path_within(alias / "0", src) and not path_within(tmp_path, src)
    assert _conflicts(alias, [src]) is not None
    assert _conflicts(tmp_path / "other.zarr", [src]) is None


def test_a_rename_refused_for_a_moment_on_windows_is_tried_again(tmp_path, monkeypatch):
    """Windows: a virus scanner or sync client holds a finished output's files open for a moment and the rename
    fails with PermissionError; it is tried again (a finished run's output was deleted on the spot). Elsewhere a
    PermissionError is final at once. (Windows is not available here: its refusals are simulated.)"""
    import os
    import sys

    from napari_linblur.io import atomic

    src, dst = tmp_path / "a", tmp_path / "b"
    src.write_text("x")
    real, refusals = os.replace, []

    def busy(a, b):
        if len(refusals) < 2:
            refusals.append(a)
            raise PermissionError(13, "The process cannot access the file", str(a))
        real(a, b)

    monkeypatch.setattr(atomic.os, "replace", busy)
    monkeypatch.setattr(sys, "platform", "win32")
    atomic.replace(src, dst)
    assert dst.read_text() == "x" and len(refusals) == 2
    monkeypatch.setattr(sys, "platform", "linux")
    refusals.clear()
    dst.rename(src)
    with pytest.raises(PermissionError):
        atomic.replace(src, dst)


def test_a_store_chunked_across_many_planes_is_read_plane_by_plane(tmp_path, monkeypatch):
    """Chunks of the whole depth ((Z, 256, 256), as some 3-D writers make), split into planes by dask afterwards,
    held the whole stack in memory for every plane task; above PLANE_SLAB_LIMIT such a store is read one plane per
    task (here the limit is lowered to keep the data small), below it keeps its own chunks (fewer decompressions)."""
    from napari_linblur.io import readers

    data = np.random.default_rng(0).integers(0, 4000, (20, 128, 96), dtype=np.uint16)
    z = zarr.open_array(str(tmp_path / "deep.zarr"), mode="w", shape=data.shape, chunks=(20, 64, 48),
                        dtype=data.dtype)
    z[:] = data
    assert open_zstack(tmp_path / "deep.zarr").chunks[0] == (20,)  # 0.5 MB slab: the store's chunks
    monkeypatch.setattr(readers, "PLANE_SLAB_LIMIT", 100_000)
    lazy = open_zstack(tmp_path / "deep.zarr")
    assert lazy.chunks == ((1,) * 20, (64, 64), (48, 48))
    np.testing.assert_array_equal(lazy[7].compute(), data[7])
    np.testing.assert_array_equal(lazy.compute(), data)
    ngff = write_ome_zarr(tmp_path / "deep.ome.zarr", data, axes="zyx", chunks=(20, 64, 48), pyramid_levels=1)
    assert open_zstack(ngff).chunks[0] == (1,) * 20


def test_a_tiff_replaced_after_it_was_opened_is_refused_not_read_as_its_old_type(tmp_path):
    """A multi-page TIFF replaced on disk after open_zstack: float32 pages came back labelled uint16 (70000.7 was
    then written as 4464), another size gave a bare reshape error, fewer pages 'corrupt or truncated'. Each is now
    the same error naming the file and what it held when opened."""
    import tifffile

    from napari_linblur.io.readers import open_zstack

    path = tmp_path / "rep.tif"
    tifffile.imwrite(path, np.ones((4, 32, 32), np.uint16), photometric="minisblack")
    stack = open_zstack(path)
    for other in (np.full((4, 32, 32), 70000.7, np.float32), np.ones((4, 40, 40), np.uint16),
                  np.ones((2, 32, 32), np.uint16)):
        tifffile.imwrite(path, other, photometric="minisblack")
        with pytest.raises(ValueError, match=r"rep.tif: now holds .* not the \(4, 32, 32\) uint16 it held when the "
                                             r"stack was opened"):
            stack.compute()
    tifffile.imwrite(path, np.full((4, 32, 32), 7, np.uint16), photometric="minisblack")
    assert int(stack.compute().max()) == 7  # the same layout again: read as it is now


def test_a_store_deleted_or_written_again_after_it_was_opened_says_so(tmp_path):
    """A zarr store deleted or rewritten (other chunks, size or type) after it was opened read as 'this output is
    damaged — write it again', which cannot help: the open array kept its old metadata. It now says the store
    changed since it was opened."""
    import shutil

    from napari_linblur.io.omezarr import write_ome_zarr
    from napari_linblur.io.readers import open_zstack

    path = tmp_path / "s.zarr"
    write_ome_zarr(path, np.ones((4, 32, 32), np.uint16), axes="zyx")
    stack = open_zstack(path)
    write_ome_zarr(path, np.ones((2, 48, 48), np.float32), axes="zyx", overwrite=True)
    with pytest.raises(ValueError, match="the store was written again since it was opened"):
        stack.compute()
    shutil.rmtree(path)
    with pytest.raises(ValueError, match="deleted or written again since it was opened"):
        stack.compute()
    # a store another tool wrote (no completeness marker): deleted, or written again with another type whose chunks
    # still decode (int32 bytes read as float32), it read as zeros or as garbage silently
    import zarr

    other = tmp_path / "other.zarr"
    zarr.create_array(other, shape=(3, 32, 32), chunks=(1, 32, 32), dtype="float32")[:] = 1.0
    lazy = open_zstack(other)
    zarr.create_array(other, shape=(3, 32, 32), chunks=(1, 32, 32), dtype="int32", overwrite=True)[:] = 5
    with pytest.raises(ValueError, match="written again since it was opened"):
        lazy.compute()
    lazy = open_zstack(other)
    zarr.open_array(other, mode="r+").attrs["note"] = "seen"  # new attributes only: read on
    assert float(lazy.compute().max()) == 5.0
    # our own output written again with the same layout (--overwrite moves a new store into place): refused, not a
    # mix of old and new planes
    ours = write_ome_zarr(tmp_path / "ours.zarr", np.ones((3, 16, 16), np.uint16), axes="zyx")
    ours_lazy = open_zstack(ours)
    write_ome_zarr(ours, np.full((3, 16, 16), 7, np.uint16), axes="zyx", overwrite=True)
    with pytest.raises(ValueError, match="written again since it was opened"):
        ours_lazy.compute()
    shutil.rmtree(other)
    with pytest.raises(ValueError, match="deleted or written again since it was opened"):
        lazy.compute()


def test_tiff_planes_without_leading_axes_read_the_whole_series(tmp_path):
    """A TIFF series read as one chunk (no leading axes) returned its first page only."""
    import tifffile

    from napari_linblur.io._lazy import TiffPlanes

    path = tmp_path / "pages.tif"
    data = np.arange(3 * 8 * 8, dtype=np.uint16).reshape(3, 8, 8)
    tifffile.imwrite(path, data, photometric="minisblack")
    np.testing.assert_array_equal(TiffPlanes(path, 0, (3, 8, 8), np.uint16, page_ndim=3)[:], data)


def test_pyramid_of_64_bit_integers_is_exact_and_levels_say_how_they_were_made(tmp_path):
    """A 2x2 mean of uint64 2^64 - 1 went through float64, rounded to 2^64 and wrapped to 0 (int64 max to int64
    min): 64-bit levels are now exact integer means, rounded half to even; the multiscale says how it was made."""
    import zarr

    from napari_linblur.io.omezarr import write_ome_zarr

    for dt in (np.uint64, np.int64):
        info = np.iinfo(dt)
        a = np.full((1, 8, 8), info.max, dt)
        a[0, :2, :2] = info.min
        a[0, 2:4, :2] = [[3, 4], [4, 4]]  # mean 3.75 -> 4
        a[0, 4:6, :2] = [[2, 3], [2, 3]]  # mean 2.5 -> 2 (half to even)
        path = write_ome_zarr(tmp_path / f"{dt.__name__}.zarr", a, axes="zyx", pyramid_levels=2)
        level = zarr.open_group(path, mode="r")["1"][:]
        assert level.dtype == dt and level[0, :3, 0].tolist() == [info.min, 4, 2] and level[0, 0, 1] == info.max
        ms = zarr.open_group(path, mode="r").attrs["ome"]["multiscales"][0]
        assert "2x2 block mean" in ms["metadata"]["method"] and "half to even" in ms["metadata"]["integers"]
