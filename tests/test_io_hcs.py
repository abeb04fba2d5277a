"""OME-Zarr HCS plates and the root of a ``linblur synth`` dataset open as one lazy stack along a leading P axis
(one position per well/field or synth field), and ``linblur focus`` names each position."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_linblur.io.readers import open_zstack, open_zstack_with_metadata

pytest.importorskip("ome_zarr")

C, Z, Y, X = 2, 3, 16, 16
WELLS = {"A/1": 2, "B/2": 1}  # well -> number of fields


def _value(well: str, field: int) -> np.ndarray:
    """A distinct stack per position: a bright square whose sharpness peaks at a well/field-dependent plane."""
    rng = np.random.default_rng([ord(ch) for ch in well] + [field])
    data = rng.integers(0, 50, size=(C, Z, Y, X)).astype(np.uint16)
    data[:, :, 4:12, 4:12] += np.uint16(1000 + 100 * field + (10 if well == "B/2" else 0))
    return data


def _plate(path: Path, odd: str | None = None) -> dict[str, np.ndarray]:
    """An HCS plate written with ome-zarr-py; ``odd`` (e.g. ``'B/2/0'``) gets 8 columns instead of 16."""
    import zarr
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

    root = zarr.open_group(str(path), mode="w")
    write_plate_metadata(root, ["A", "B"], ["1", "2"], list(WELLS))
    written = {}
    for well, n_fields in WELLS.items():
        row, col = well.split("/")
        group = root.require_group(row).require_group(col)
        write_well_metadata(group, [str(f) for f in range(n_fields)])
        for f in range(n_fields):
            data = _value(well, f)
            if odd == f"{well}/{f}":
                data = data[..., :8]
            image = group.require_group(str(f))
            write_image(data, image, axes="czyx", storage_options={"chunks": (1, 1, Y, X)})
            attrs = image.attrs.asdict()
            ome = attrs.get("ome", attrs)
            ome["multiscales"][0]["datasets"][0]["coordinateTransformations"] = [
                {"type": "scale", "scale": [1.0, 2.0, 0.65, 0.65]}]
            ome["omero"] = {"channels": [{"label": "DAPI"}, {"label": "GFP"}]}
            image.attrs.update(attrs)
            written[f"{well}/{f}"] = data
    return written


def test_a_plate_opens_as_one_lazy_stack_of_positions(tmp_path, monkeypatch):
    from napari_linblur.io import _lazy

    written = _plate(tmp_path / "hcs.ome.zarr")
    reads = []
    orig = _lazy.SafeZarrArray.__getitem__
    monkeypatch.setattr(_lazy.SafeZarrArray, "__getitem__", lambda self, key: reads.append(key) or orig(self, key))
    arr, meta = open_zstack_with_metadata(tmp_path / "hcs.ome.zarr")
    assert reads == []  # nothing read at open
    assert arr.shape == (3, C, Z, Y, X) and arr.dtype == np.uint16
    assert meta.axes == "pczyx"
    assert meta.extra["fields"] == ["A/1/0", "A/1/1", "B/2/0"]
    assert meta.extra["format"] == "ome-zarr-hcs" and meta.extra["wells"] == ["A/1", "B/2"]
    assert meta.scale == (1.0, 1.0, 2.0, 0.65, 0.65)
    assert meta.channel_names == ["DAPI", "GFP"]
    assert all(c == 1 for c in arr.chunks[0] + arr.chunks[1] + arr.chunks[2])  # one chunk per plane
    assert arr.chunks[3:] == ((Y,), (X,))
    expected = np.stack([written[f] for f in meta.extra["fields"]])
    np.testing.assert_array_equal(arr.compute(scheduler="synchronous"), expected)

    one, m1 = open_zstack_with_metadata(tmp_path / "hcs.ome.zarr", channel="GFP")
    assert one.shape == (3, Z, Y, X) and m1.axes == "pzyx" and m1.channel_names == ["GFP"]
    np.testing.assert_array_equal(one[2].compute(scheduler="synchronous"), written["B/2/0"][1])


def test_one_well_opens_its_fields(tmp_path):
    _plate(tmp_path / "hcs.ome.zarr")
    arr, meta = open_zstack_with_metadata(tmp_path / "hcs.ome.zarr" / "A" / "1", channel=0)
    assert arr.shape == (2, Z, Y, X) and meta.axes == "pzyx" and meta.extra["fields"] == ["0", "1"]
    # an image inside the plate still opens alone
    assert open_zstack(tmp_path / "hcs.ome.zarr" / "B" / "2" / "0").shape == (C, Z, Y, X)


def test_a_plate_with_an_odd_image_is_refused_naming_it(tmp_path):
    _plate(tmp_path / "hcs.ome.zarr", odd="B/2/0")
    with pytest.raises(ValueError, match=r"image 'B/2/0' is \(2, 3, 16, 8\) uint16.*'A/1/0' is \(2, 3, 16, 16\)"):
        open_zstack_with_metadata(tmp_path / "hcs.ome.zarr")


def test_a_plate_listing_a_missing_well_is_refused(tmp_path):
    import shutil

    _plate(tmp_path / "hcs.ome.zarr")
    shutil.rmtree(tmp_path / "hcs.ome.zarr" / "B" / "2")
    with pytest.raises(ValueError, match="lists well 'B/2'"):
        open_zstack_with_metadata(tmp_path / "hcs.ome.zarr")


def test_focus_on_a_plate_names_every_position(tmp_path, capsys):
    from napari_linblur.cli.main import main

    _plate(tmp_path / "hcs.ome.zarr")
    assert main(["focus", str(tmp_path / "hcs.ome.zarr"), "--channel", "0", "--method", "brenner",
                 "--workers", "1", "--no-progress"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ": best plane" in ln]
    assert [ln.split(":")[0].strip() for ln in lines] == ["A/1/0", "A/1/1", "B/2/0"]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from napari_linblur.cli.main import main

    out = tmp_path_factory.mktemp("synth") / "syn.zarr"
    assert main(["synth", str(out), "--fields", "2", "--shape", "32", "32", "--seed", "0", "-q",
                 "--no-progress"]) == 0
    return out


def test_a_synth_root_opens_as_its_fields_like_the_napari_reader(synth_root):
    from napari_linblur.io.readers import open_zstacks

    arr, meta = open_zstack_with_metadata(synth_root)
    stacks = open_zstacks(synth_root)
    assert meta.axes[0] == "p" and arr.shape == (2, *stacks[0].shape)
    assert meta.extra["fields"] == ["field_000", "field_001"] and meta.extra["format"] == "linblur-synth"
    _, first = open_zstack_with_metadata(synth_root / "field_000")
    assert meta.scale[1:] == first.scale and meta.channel_names == first.channel_names
    np.testing.assert_array_equal(arr[1].compute(scheduler="synchronous"),
                                  stacks[1].compute(scheduler="synchronous"))


def test_focus_on_a_synth_root(synth_root, capsys):
    from napari_linblur.cli.main import main

    _, meta = open_zstack_with_metadata(synth_root)
    args = ["--channel", "0"] if "c" in meta.axes else []
    assert main(["focus", str(synth_root), *args, "--method", "brenner", "--workers", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "field_000: best plane" in out and "field_001: best plane" in out


def test_bioformats2raw_export_reads_every_series_along_p(tmp_path):
    """A multi-position bioformats2raw export (``0/``, ``1/`` ... one image each) gives every position, as a
    multi-series OME-TIFF does; it used to read series 0 only, without a word."""
    import zarr

    from napari_linblur.io.omezarr import write_ome_zarr

    def export(root, images):  # each series written on its own, then moved into the export's root group
        zarr.open_group(str(root), mode="w", zarr_format=2).attrs.update({"bioformats2raw.layout": 3})
        for i, data in enumerate(images):
            write_ome_zarr(tmp_path / f"s{i}.zarr", data, axes="tzyx", scale=(5.0, 2.0, 0.5, 0.5))
            (tmp_path / f"s{i}.zarr").rename(root / str(i))
        return root

    rng = np.random.default_rng(4)
    series = [rng.integers(0, 1000, size=(2, 3, 16, 20), dtype=np.uint16) for _ in range(2)]
    root = export(tmp_path / "bf2raw.zarr", series)
    arr, meta = open_zstack_with_metadata(root)
    assert meta.axes == "tpzyx" and arr.shape == (2, 2, 3, 16, 20)
    np.testing.assert_array_equal(arr[:, 1].compute(), series[1])
    assert meta.extra["fields"] == ["series 0", "series 1"] and meta.scale[-3:] == (2.0, 0.5, 0.5)
    # a series of another shape (e.g. a macro image): series 0, and the warning names the folder of another
    odd = export(tmp_path / "odd.zarr", [series[0], series[1][:, :, :8]])
    with pytest.warns(UserWarning, match=r"2 series; reading series 0 \(2, 3, 16, 20\) only.*odd.zarr/1"):
        assert open_zstack(odd).shape == (2, 3, 16, 20)
    # same shape, another pixel size: not one acquisition's positions either
    zarr.open_group(str(tmp_path / "cal.zarr"), mode="w", zarr_format=2).attrs.update({"bioformats2raw.layout": 3})
    for i, sc in enumerate(((5.0, 2.0, 0.5, 0.5), (5.0, 1.0, 0.1, 0.1))):
        write_ome_zarr(tmp_path / f"c{i}.zarr", series[i], axes="tzyx", scale=sc)
        (tmp_path / f"c{i}.zarr").rename(tmp_path / "cal.zarr" / str(i))
    with pytest.warns(UserWarning, match="pixel size"):
        assert open_zstack(tmp_path / "cal.zarr").shape == (2, 3, 16, 20)
