"""The Train widget in a real napari viewer (run under Xvfb), added through the manifest: what a run trains on
is what Start checked, and the autoencoder learns from an ordinary z-stack layer."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_helpers import PoolBlocker, last_error, small_training
from napari_linblur._napari._sample_data import synthetic_stack_data


def _read_dataset(path):
    from napari_linblur.io.readers import open_zstack

    return np.asarray(open_zstack(str(path))).squeeze()


def test_train_uses_the_layer_and_options_taken_at_start(viewer, qtbot, tmp_path):
    """Start checks and reports one layer; picking another (constant, never checked) layer or changing options while
    the job waits in the busy thread pool must not change what it trains on; the job reads no widget."""
    from napari_linblur.models.registry import read_card

    a = synthetic_stack_data((48, 64), seed=1)[0][0]
    viewer.add_image(a, name="A-checked", scale=(2.0, 0.5, 0.5))
    viewer.add_image(np.full((9, 48, 64), 7, np.uint16), name="B-constant")
    w = small_training(viewer, tmp_path, steps=2)
    w.set_choice(w.source, "layer")
    w.layer.set_layer(viewer.layers["A-checked"])

    # any widget read off the GUI thread is recorded
    off_gui = []

    def watch(obj, name):
        orig = getattr(obj, name)

        def wrapped(*args, **kwargs):
            if threading.current_thread() is not threading.main_thread():
                off_gui.append(f"{type(obj).__name__}.{name}")
            return orig(*args, **kwargs)

        setattr(obj, name, wrapped)

    watch(w.layer, "layer")
    for combo in (w.kind, w.source, w.preset, w.init):
        watch(combo, "currentData")
    for box in (w.steps, w.lr, w.batch, w.patch, w.seed):
        watch(box, "value")
    for edit in (w.path, w.out):
        watch(edit, "text")

    blocker = PoolBlocker()
    try:
        assert w.start(), w.panel.status.text()
        assert "queued" in w.panel.status.text(), w.panel.status.text()  # a queued run says so
        # the user looks at / changes other things while the run waits in the queue
        w.layer.set_layer(viewer.layers["B-constant"])
        w.steps.setValue(7)
        w.patch.setValue(48)
        w.batch.setValue(3)
        w.seed.setValue(5)
        w.set_choice(w.kind, "defocus")
        qtbot.wait(100)
    finally:
        blocker.release.set()
    qtbot.waitUntil(lambda: not w.panel.running, timeout=60000)
    assert w.model_path, w.panel.status.text()
    np.testing.assert_array_equal(_read_dataset(tmp_path / "run" / "data.ome.zarr"), a)
    card = read_card(w.model_path)
    assert card["task"] == "deblur" and card["training"]["steps"] == 2
    assert "on A-checked" in w.result_label.text()
    assert not off_gui, off_gui


def test_train_autoencoder_on_a_single_z_stack_layer(viewer, qtbot, tmp_path):
    """An ordinary (Z, Y, X) layer trains the autoencoder: its planes are cut into tiles, each a field of the
    train/validation/test split; planes too small for 3 tiles of the patch are refused before anything is
    written, saying the autoencoder needs at least 3 fields."""
    from napari_linblur.models.registry import read_card

    stack = synthetic_stack_data((64, 64), seed=5)[0][0]  # (9, 64, 64), one z-stack
    viewer.add_image(stack, name="zstack")
    viewer.add_image(stack[:, :48, :], name="small zstack")
    w = small_training(viewer, tmp_path, steps=2, kind="ae", preset="default")
    w.set_choice(w.source, "layer")

    w.layer.set_layer(viewer.layers["small zstack"])  # 48 x 64 px planes: at most 1 x 2 tiles of 32 px
    w.out.setText(str(tmp_path / "refused"))
    assert not w.start() and not w.panel.running
    err = last_error()
    assert "'small zstack' is a single z-stack" in err and "at least 3 fields" in err, err
    assert "at most 16" in err, err
    assert not (tmp_path / "refused").exists()

    w.layer.set_layer(viewer.layers["zstack"])  # 64 x 64 px planes: 2 x 2 tiles of 32 px, 4 fields
    w.out.setText(str(tmp_path / "run"))
    assert w.start(), w.panel.status.text()
    qtbot.waitUntil(lambda: not w.panel.running, timeout=60000)
    assert w.model_path, w.panel.status.text()
    card = read_card(w.model_path)
    assert card["task"] == "ae" and card["training"]["steps"] == 2
    assert card["data_tiles"]["grid"] == [2, 2] and card["data_tiles"]["fields_before"] == 1
    assert sorted(i for ids in card["data"]["split"].values() for i in ids) == [0, 1, 2, 3]
    np.testing.assert_array_equal(_read_dataset(tmp_path / "run" / "data.ome.zarr"), stack)


def test_ae_tile_grid_and_tiles():
    from napari_linblur._napari import _train
    from napari_linblur.training.ae import AEDataset, FieldStack

    assert _train.ae_tile_grid((3, 9, 16, 16), 32, "x") == (1, 1)  # enough fields: untouched
    assert _train.ae_tile_grid((2, 9, 64, 64), 32, "x") == (2, 2)  # 2 fields x 4 tiles (as many as fit)
    assert _train.ae_tile_grid((2, 9, 32, 64), 32, "x") == (1, 2)  # 2 fields x 2 tiles
    r, c = _train.ae_tile_grid((9, 520, 696), 64, "x")
    assert r * c >= _train.AE_TILE_TARGET and 520 // r >= 64 and 696 // c >= 64
    with pytest.raises(ValueError, match="at least 3 fields"):
        _train.ae_tile_grid((9, 40, 40), 32, "layer 'z'")
    planes = np.arange(3 * 65 * 70).reshape(3, 65, 70)
    data = AEDataset("p", None, [FieldStack("f", planes, np.arange(3.0), [0, 1, 2])], "zstack",
                     meta={"n_fields": 1})
    tiled = _train.tile_fields(data, (2, 3))
    assert tiled.meta["n_fields"] == 6 and [f.name for f in tiled.fields][:2] == ["f_y0x0", "f_y0x1"]
    # the tiles cover the planes exactly once
    rebuilt = np.concatenate([np.concatenate([tiled.fields[3 * i + j].planes for j in range(3)], axis=-1)
                              for i in range(2)], axis=-2)
    np.testing.assert_array_equal(rebuilt, planes)


def test_start_again_after_an_early_cancel_trains_in_a_new_run_folder(viewer, qtbot, tmp_path, capfd):
    """Cancel before the first log line leaves the run folder with a checkpoint (and, once a step was trained, the
    model so far) but no ``log.jsonl``: Start again with the same run folder must take ``run-2``, never fail with
    the command line's 'use --resume' nor touch the first run's files."""
    from pathlib import Path

    from napari_linblur.training.loop import CHECKPOINT

    w = small_training(viewer, tmp_path, steps=200)
    first = tmp_path / "run"
    assert w.start(), w.panel.status.text()
    # cancelled once the loop started (its step-0 checkpoint is written before the first step); a Cancel before the
    # job started would leave an empty folder
    qtbot.waitUntil(lambda: (first / CHECKPOINT).exists(), timeout=120000)
    w.panel.cancel_btn.click()
    qtbot.waitUntil(lambda: not w.panel.running, timeout=120000)
    assert (first / CHECKPOINT).exists()
    kept = (first / CHECKPOINT).read_bytes()
    w.steps.setValue(2)
    assert w.start(), w.panel.status.text()
    qtbot.waitUntil(lambda: not w.panel.running, timeout=120000)
    assert w.model_path and Path(w.model_path).parent == tmp_path / "run-2", (w.model_path, w.panel.status.text())
    assert (first / CHECKPOINT).read_bytes() == kept
    # a folder holding any file of a run (here only its recorded configuration) is taken as well
    third = tmp_path / "other"
    third.mkdir()
    (third / "train_config.json").write_text("{}")
    w.out.setText(str(third))
    assert w._unique_out() == tmp_path / "other-2"
    assert "Traceback" not in capfd.readouterr().err


def test_a_cancel_while_the_layer_is_written_stops_the_write_and_leaves_nothing(tmp_path):
    """The Train widget writes a layer's data before training: Cancel used to wait for the whole write (7 s for a
    24 x 2048 x 2048 layer), then saved an untrained model. The write now stops at its next block."""
    import dask.array as da

    from napari_linblur._napari import _train
    from napari_linblur._napari._ops import Cancelled

    data = da.from_array(synthetic_stack_data((64, 64), seed=1)[0][0], chunks=(1, 64, 64))
    calls = []

    def cancel_at_once(done, total):
        calls.append(done)
        raise Cancelled("cancelled")

    with pytest.raises(Cancelled):
        _train.write_layer_dataset(data, "stack", [1.0, 1.0, 1.0], tmp_path, "defocus", 32, check_contents=True,
                                   progress=cancel_at_once)
    assert len(calls) == 1 and list(tmp_path.iterdir()) == []


def test_a_run_folder_taken_after_start_is_a_notification(viewer, qtbot, tmp_path, capfd, monkeypatch):
    """A run folder that another run fills between Start and the job (the training loop's FileExistsError) is an
    error notification in the widget's words, not a traceback on stderr."""
    from pathlib import Path

    from napari_linblur.training import loop

    original = loop.train

    def taken_meanwhile(task, cfg, **kwargs):
        (Path(cfg.out) / loop.CHECKPOINT).write_bytes(b"another run")
        return original(task, cfg, **kwargs)

    monkeypatch.setattr(loop, "train", taken_meanwhile)
    w = small_training(viewer, tmp_path, steps=2)
    assert w.start(), w.panel.status.text()
    qtbot.waitUntil(lambda: not w.panel.running, timeout=60000)
    err = last_error()
    assert f"{tmp_path / 'run'} already holds a training run" in err, err
    assert "--resume" not in err and "--out" not in err and "FileExistsError" not in err, err
    assert "Traceback" not in capfd.readouterr().err
    assert (tmp_path / "run" / loop.CHECKPOINT).read_bytes() == b"another run"


def test_a_run_folder_name_too_long_is_refused(viewer, qtbot, tmp_path):
    """An over-long run folder name (ENAMETOOLONG) is refused with a notification when Start is clicked."""
    w = small_training(viewer, tmp_path, steps=2)
    w.out.setText(str(tmp_path / ("b" * 300)))
    w.start_btn.click()
    assert not w.panel.running
    err = last_error()
    assert "cannot create the run folder" in err and "File name too long" in err, err
