"""Whole-stack runs of the pair widgets (and the shared output machinery of ``_qt/_pairs.py``) in real napari
viewers (run under Xvfb): where a pair output sits on a stack with axes before Z, what a lazy output does with a
plane that fails, and where an OME-Zarr output path goes."""

from __future__ import annotations

import numpy as np
import pytest

import napari_linblur as nl
from napari_helpers import TILE, add, deblur_pair_of, notes, wait_run
from napari_linblur._napari import _ops
from napari_linblur._napari._sample_data import synthetic_stack_data

UNITS = ("s", "um", "um", "um")


@pytest.fixture(scope="module")
def stack():
    """A seeded 4-plane through-focus stack (float32, Z, Y, X), small."""
    return synthetic_stack_data((48, 64), seed=5)[0][0, :4].astype(np.float32)










def shown(layer) -> np.ndarray:
    """The 2-D plane ``layer`` shows at the viewer's current position."""
    return np.asarray(layer._slice.image.view)


def level0(layer):
    return layer.data[0] if layer.multiscale else layer.data


# ------------------------------------------------------------------------------ (T, Z, Y, X) pair outputs


@pytest.mark.parametrize(("widget", "mode"), [("Blur synthesis", "layer"), ("Blur synthesis", "lazy"),
                                              ("Blur synthesis", "zarr"), ("Deblur", "lazy")])
def test_pair_output_of_a_time_stack_follows_the_time_slider(viewer, qtbot, tiny_models, stack, tmp_path, widget,
                                                             mode):
    """A pair run on (T, Z, Y, X) keeps a one-plane Z axis spanning the input's Z extent: napari lines layers up
    by their last axes, so a (T, Y, X) output had time on the viewer's Z slider (and turned unit rendering off)."""
    t_stack = np.stack([stack, stack[:, ::-1]])  # (T=2, Z=4, Y, X): the second time point is mirrored
    layer = viewer.add_image(t_stack, name="t4", scale=(1.0, 4.0, 0.5, 0.5), translate=(0.0, 10.0, 5.0, 7.0),
                             units=UNITS, axis_labels=("t", "z", "y", "x"))
    ranges = tuple(viewer.dims.range)
    w = add(viewer, widget)
    w.preview_on.setChecked(False)
    if widget == "Deblur":
        deblur_pair_of(w, layer, 3, 0, tiny_models["ae"])
    else:
        w.model.set_model(tiny_models["ae"])
        w.a_layer.set_layer(layer)
        w.c_layer.set_layer(layer)
        w.a_plane.setValue(3)
        w.c_plane.setValue(0)
    w.output.set_mode(mode, str(tmp_path / "out.ome.zarr") if mode == "zarr" else None)
    n, noted = len(viewer.layers), len(notes())  # notifications are global: count this test's own
    assert w.run_whole_stack()
    wait_run(qtbot, w)
    assert len(viewer.layers) == n + 1, w.panel.status.text()
    out = viewer.layers[-1]
    data = level0(out)
    assert data.shape == (2, 1, 48, 64)
    # lined up with the input: its time axis, its units, one plane as deep as the input's 4 planes
    assert tuple(out.scale) == (1.0, 16.0, 0.5, 0.5)
    assert tuple(out.translate) == (0.0, 16.0, 5.0, 7.0)
    assert tuple(str(u) for u in out.units) == tuple(str(u) for u in layer.units)
    assert viewer.layers.extent.units is not None  # napari still renders units
    assert not [m for m in notes()[noted:] if "Inconsistent units" in m]
    assert tuple(viewer.dims.range) == ranges  # the output adds no slider positions
    if widget == "Blur synthesis" and mode == "layer":
        np.testing.assert_allclose(data[1, 0], nl.synthesize_blur(t_stack[1, 3], t_stack[1, 0], w.alpha.value(),
                                                                  model=tiny_models["ae"], tile=TILE),
                                   rtol=1e-4, atol=1e-3)
    planes = [np.asarray(data[t, 0]) for t in range(2)]
    assert not np.allclose(planes[0], planes[1])
    for t in (0, 1):
        for z in (0, 3):  # the output shows at every Z of the input, for the time point the viewer is at
            viewer.dims.set_current_step(0, t)
            viewer.dims.set_current_step(1, z)
            qtbot.waitUntil(lambda t=t: shown(out).shape == planes[t].shape and np.allclose(shown(out), planes[t]),
                            timeout=5000)
    if mode == "zarr":
        assert out.metadata["linblur_axes"] == "tzyx"


def test_pair_stacks_keeps_a_spanning_z_axis_only_when_axes_come_before_z():
    """The Qt-free part: a (Z, Y, X) pair still gives (Y, X); (T, Z, Y, X) gives (T, 1, Y, X) spanning Z."""
    from types import SimpleNamespace

    def fake(shape, scale, translate):
        return SimpleNamespace(data=np.zeros(shape, np.float32), multiscale=False, name="x", scale=scale,
                               translate=translate, ndim=len(shape))

    zyx = fake((5, 8, 8), (2.0, 1.0, 1.0), (3.0, 0.0, 0.0))
    pair = _ops.pair_stacks(zyx, 0, zyx, 4)
    assert pair.first.shape == (8, 8) and pair.scale == (1.0, 1.0) and pair.dropped_z
    tzyx = fake((2, 5, 8, 8), (1.0, 2.0, 1.0, 1.0), (0.0, 3.0, 0.0, 0.0))
    pair = _ops.pair_stacks(tzyx, 0, tzyx, 4)
    assert pair.first.shape == pair.second.shape == (2, 1, 8, 8) and pair.dropped_z
    assert pair.scale == (1.0, 10.0, 1.0, 1.0) and pair.translate == (0.0, 7.0, 0.0, 0.0)


# ------------------------------------------------------------------------------------ lazy output errors


def test_a_lazy_output_plane_that_fails_is_a_notification_and_nan(viewer, qtbot, tiny_models, stack):
    """napari computes a lazy layer's planes while slicing: an error there is a notification naming the input
    layer (once per message) and a NaN plane, not a traceback escaping napari's slicing."""
    bad = stack.copy()
    bad[2, 5, 5] = np.nan  # only plane 2 cannot be computed
    viewer.add_image(bad, name="cells")
    viewer.dims.set_current_step(0, 0)
    w = add(viewer, "Defocus map & focus QC")
    w.model.set_model(tiny_models["defocus"])
    w.preview_on.setChecked(False)
    w.output.set_mode(w.output.LAZY)
    assert w.run_whole_stack()
    wait_run(qtbot, w)
    out = viewer.layers[-1]
    assert out.name == "defocus σ[cells]" and type(out.data).__module__.startswith("dask")
    assert np.isfinite(shown(out)).all()
    before = len(notes())
    for _ in range(2):  # the same failure again (sliced twice) pops up once
        viewer.dims.set_current_step(0, 2)
        qtbot.wait(50)
        assert np.isnan(shown(out)).all()
        viewer.dims.set_current_step(0, 1)
        qtbot.wait(50)
        assert np.isfinite(shown(out)).all()
    new = notes()[before:]
    assert len(new) == 1, new
    assert "'cells' contains NaN" in new[0] and "plane 2" in new[0] and out.name in new[0]
    # a computed plane equals the operation's
    np.testing.assert_allclose(np.asarray(out.data[1]), nl.estimate_defocus(bad[1], model=tiny_models["defocus"],
                                                                            tile=TILE), rtol=1e-5, atol=1e-5)


def test_guard_blocks_names_its_graph_after_the_guarded_one():
    """Two guarded arrays never share dask keys (napari's dask cache is keyed by them)."""
    import dask.array as da

    a = da.zeros((2, 4, 4), chunks=(1, 4, 4))
    b = da.ones((2, 4, 4), chunks=(1, 4, 4))
    ga, gb = _ops.guard_blocks(a, print), _ops.guard_blocks(b, print)
    assert ga.name != gb.name
    assert float(ga.sum().compute()) == 0.0 and float(gb.sum().compute()) == 32.0


# ---------------------------------------------------------------------------------------- OME-Zarr paths


def test_zarr_output_path_with_a_tilde_goes_to_the_home_folder(viewer, qtbot, tiny_models, stack, tmp_path,
                                                               monkeypatch):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    viewer.add_image(stack[:2], name="cells")
    w = add(viewer, "Defocus map & focus QC")
    w.model.set_model(tiny_models["defocus"])
    w.preview_on.setChecked(False)
    w.output.set_mode(w.output.ZARR, "~/sigma.ome.zarr")
    n = len(viewer.layers)
    assert w.run_whole_stack()
    wait_run(qtbot, w)
    assert len(viewer.layers) == n + 1, w.panel.status.text()
    assert (home / "sigma.ome.zarr").is_dir()
    assert not (cwd / "~").exists()
    # the same path again is refused before the run, as the file it now is
    assert not w.run_whole_stack()
    assert "already exists" in w.panel.status.text() and str(home / "sigma.ome.zarr") in w.panel.status.text()


def test_an_unwritable_zarr_output_names_the_users_path(viewer, qtbot, tiny_models, stack, tmp_path):
    """A failed write names the path typed (or the folder that could not be made), not the writer's hidden
    temporary folder; nothing is added or left behind."""
    (tmp_path / "afile").write_text("not a folder")
    viewer.add_image(stack[:2], name="cells")
    w = add(viewer, "Defocus map & focus QC")
    w.model.set_model(tiny_models["defocus"])
    w.preview_on.setChecked(False)
    for target in (tmp_path / "afile" / "out.ome.zarr", tmp_path / "afile" / "sub" / "out.ome.zarr"):
        w.output.set_mode(w.output.ZARR, str(target))
        n = len(viewer.layers)
        assert w.run_whole_stack()
        wait_run(qtbot, w)
        status = w.panel.status.text()
        assert len(viewer.layers) == n
        assert f"{target}: cannot create its folder, {tmp_path / 'afile'} is a file" in status, status
        assert ".tmp-" not in status and "appeared while" not in status
        assert notes()[-1].endswith(status.split("failed: ", 1)[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_write_problem_recognises_only_errors_about_the_output():
    from napari_linblur._napari._qt._pairs import write_problem

    tmp = FileNotFoundError(2, "No such file or directory", "/d/.o.zarr.tmp-0123/zarr.json")
    assert write_problem("/d/o.zarr", tmp) == "cannot write /d/o.zarr: No such file or directory"
    assert write_problem("/d/o.zarr", PermissionError(13, "Permission denied", "/d/o.zarr/0")) == (
        "cannot write /d/o.zarr: Permission denied")
    assert write_problem("/d/o.zarr", OSError(5, "Input/output error", "/data/in.tif")) is None
    assert write_problem("/d/o.zarr", OSError("disk trouble")) is None


def test_a_zarr_output_name_too_long_is_refused_before_the_run(viewer, qtbot, tiny_models, stack, tmp_path):
    """A file name the file system cannot hold (ENAMETOOLONG) is refused when Run is clicked, naming the path and
    the reason; no exception escapes the click."""
    from napari_linblur._napari._qt._pairs import existing_output_problem

    target = tmp_path / ("a" * 300 + ".ome.zarr")
    problem = existing_output_problem(str(target), [])
    assert problem is not None and str(target) in problem and "File name too long" in problem, problem
    viewer.add_image(stack[:2], name="cells")
    w = add(viewer, "Defocus map & focus QC")
    w.model.set_model(tiny_models["defocus"])
    w.preview_on.setChecked(False)
    w.output.set_mode(w.output.ZARR, str(target))
    before = len(notes())
    w.run_btn.click()
    assert not w.panel.running
    assert len(notes()) == before + 1 and "File name too long" in notes()[-1], notes()[before:]
