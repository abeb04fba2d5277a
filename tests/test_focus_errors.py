"""``linblur focus --on-error {stop,skip}``: a plane that cannot be scored (NaN pixels, a TIFF whose header reads
but whose compressed data is corrupt) stops the run by default, naming the plane or file; with ``skip`` it gets NaN
scores and an error in the report, the other stacks are scored, and the exit code says the run had errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from napari_linblur.cli.main import main
from napari_linblur.io.readers import open_zstack_with_metadata

UUID = "2667264a-6432-4f7e-bf58-625a1319a1c9"




def _name(z: int, site: int) -> str:
    return f"{z:02d}_mcf-z-stacks-03212011_k06_s{site}_w1{UUID}.tif"


def _plate(root: Path, *, dtype=np.uint16, compression=None) -> Path:
    """A BBBC006 folder, channel w1, planes 14-16, sites 1-3: cells in focus at plane 15 (the middle)."""
    rng = np.random.default_rng(0)
    root.mkdir()
    for k, z in enumerate((14, 15, 16)):
        for site in (1, 2, 3):
            img = np.full((32, 40), 100.0)
            img[6:14, 8:16] = img[18:26, 22:32] = 2000.0
            img = rng.poisson(ndimage.gaussian_filter(img, (3.0, 0.3, 3.0)[k])).astype(dtype)
            tifffile.imwrite(root / _name(z, site), img, compression=compression)
    return root


def _nan_plate(root: Path) -> Path:
    plate = _plate(root, dtype=np.float32)
    bad = plate / _name(15, 2)
    img = tifffile.imread(bad)
    img[3:5, 3:5] = np.nan
    tifffile.imwrite(bad, img)
    return plate


def _corrupt_plate(root: Path) -> tuple[Path, Path]:
    """A zlib-compressed plate whose file of site 2, plane 15 has a sound header and corrupt compressed data."""
    plate = _plate(root, compression="zlib")
    bad = plate / _name(15, 2)
    with tifffile.TiffFile(bad) as tif:
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    data = bytearray(bad.read_bytes())
    data[offset + 2: offset + count] = b"\xa5" * (count - 2)  # after the zlib header: the deflate stream itself
    bad.write_bytes(bytes(data))
    return plate, bad


def _run(plate, tmp_path, scheduler, *extra) -> tuple[int, Path, Path]:
    js, cs = tmp_path / "focus.json", tmp_path / "focus.csv"
    rc = main(["focus", str(plate), "--method", "brenner", "--channel", "w1", "--scheduler", scheduler,
               "--no-progress",
               "--json", str(js), "--csv", str(cs), *extra])
    return rc, js, cs


def test_the_corrupt_file_opens_but_fails_at_read(tmp_path):
    plate, bad = _corrupt_plate(tmp_path / "plate")
    arr, meta = open_zstack_with_metadata(plate)  # the header is fine: the field is not dropped at open
    assert arr.shape[:3] == (3, 1, 3) and not meta.extra.get("dropped_fields")
    with pytest.raises(Exception, match=bad.name):
        arr[1, 0, 1].compute()


@pytest.mark.parametrize("kind", ["nan", "corrupt"])
def test_stop_is_the_default_and_names_the_plane(tmp_path, scheduler, capsys, kind):
    if kind == "nan":
        plate, needle = _nan_plate(tmp_path / "plate"), "NaN"
    else:
        plate, bad = _corrupt_plate(tmp_path / "plate")
        needle = bad.name
    rc, js, cs = _run(plate, tmp_path, scheduler)
    assert rc == 2
    err = capsys.readouterr().err
    assert needle in err
    if kind == "nan":
        # named as the folder the user gave, not as focus_curve's argument ("stack contains NaN")
        assert f"{str(plate)!r} contains NaN" in err and "stack" not in err, err
        assert "(at plane (1, 1) of the input)" in err  # field k06_s2 (P 1), Z 1
    assert not js.exists() and not cs.exists()


@pytest.mark.parametrize("kind", ["nan", "corrupt"])
def test_skip_reports_the_failed_stack_and_scores_the_others(tmp_path, scheduler, capsys, kind):
    if kind == "nan":
        plate, needle = _nan_plate(tmp_path / "plate"), "NaN"
    else:
        plate, bad = _corrupt_plate(tmp_path / "plate")
        needle = bad.name
    rc, js, cs = _run(plate, tmp_path, scheduler, "--on-error", "skip")
    assert rc == 1
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("k06_s2:"))
    assert "[error] plane 1 (BBBC006 plane 15):" in line and needle in line
    assert "k06_s1: best plane 1 (BBBC006 plane 15)" in out and "k06_s3: best plane 1 (BBBC006 plane 15)" in out
    assert "[error] 1 of 3 stacks" in out

    report = json.loads(js.read_text())
    s2 = report["stacks"]["k06_s2"]
    assert needle in s2["error"] and s2["error"].startswith("plane 1 (BBBC006 plane 15):")
    assert s2["scores"][1] is None and all(isinstance(v, float) for v in (s2["scores"][0], s2["scores"][2]))
    assert s2["best_plane"] in (0, 2) and s2["best_bbbc006_plane"] == (14, 16)[s2["best_plane"] // 2]
    for site in ("k06_s1", "k06_s3"):
        s = report["stacks"][site]
        assert s["error"] is None and s["best_plane"] == 1 and s["has_signal"] is True
        assert all(math.isfinite(v) for v in s["scores"])

    rows = list(csv.DictReader(cs.read_text().splitlines()))
    assert list(rows[0])[-1] == "error" and len(rows) == 9
    assert {r["error"] for r in rows if r["site"] != "2"} == {""}
    bad_rows = [r for r in rows if r["site"] == "2"]
    assert {r["error"] for r in bad_rows} == {s2["error"]}
    assert bad_rows[1]["score"] == "nan" and bad_rows[0]["score"] != "nan"


def test_skip_with_no_plane_scored_has_no_best_plane(tmp_path, scheduler, capsys):
    plate = _plate(tmp_path / "plate", dtype=np.float32)
    for z in (14, 15, 16):
        img = tifffile.imread(plate / _name(z, 3))
        img[0, 0] = np.nan
        tifffile.imwrite(plate / _name(z, 3), img)
    rc, js, cs = _run(plate, tmp_path, scheduler, "--on-error", "skip")
    assert rc == 1
    out = capsys.readouterr().out
    assert "k06_s3: no plane scored" in out and "[error] plane 0 (BBBC006 plane 14):" in out
    s3 = json.loads(js.read_text())["stacks"]["k06_s3"]
    assert s3["best_plane"] is None and s3["best_bbbc006_plane"] is None and s3["has_signal"] is None
    assert s3["scores"] == [None, None, None]
    assert all(f"plane {z} (BBBC006 plane {14 + z}): ValueError" in s3["error"] for z in range(3))
    rows = [r for r in csv.DictReader(cs.read_text().splitlines()) if r["site"] == "3"]
    assert {(r["best_plane"], r["best_bbbc006_plane"], r["has_signal"]) for r in rows} == {("", "", "")}


def test_skip_on_a_clean_plate_exits_0_with_empty_errors(tmp_path, scheduler, capsys):
    plate = _plate(tmp_path / "plate")
    rc, js, cs = _run(plate, tmp_path, scheduler, "--on-error", "skip")
    assert rc == 0
    out = capsys.readouterr().out
    assert "[error]" not in out
    report = json.loads(js.read_text())
    assert all(s["error"] is None and s["best_plane"] == 1 for s in report["stacks"].values())
    rows = list(csv.DictReader(cs.read_text().splitlines()))
    assert len(rows) == 9 and {r["error"] for r in rows} == {""}
