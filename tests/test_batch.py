"""Batch runs on a real dask.distributed cluster: lazy in, OME-Zarr out, input untouched."""

import numpy as np
import pytest
from scipy import ndimage

from napari_linblur.batch import compute_with_client, dask_client, run_batch
from napari_linblur.inference.tiling import map_planes
from napari_linblur.io.omezarr import write_ome_zarr
from napari_linblur.io.readers import open_zstack, open_zstack_with_metadata


def _smooth(a):
    return map_planes(lambda p: ndimage.gaussian_filter(p.astype(np.float32), 1.5), a)


@pytest.fixture
def stack_path(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(100, 4000, size=(2, 3, 64, 80), dtype=np.uint16)
    path = write_ome_zarr(tmp_path / "in.zarr", data, axes="czyx", scale=(1, 2.0, 0.65, 0.65),
                          channel_names=["w1", "w2"])
    return path, data


def test_run_batch_on_local_cluster(stack_path, tmp_path):
    path, data = stack_path
    before = sorted(p.read_bytes() for p in path.rglob("*") if p.is_file())
    out = run_batch(_smooth, path, tmp_path / "out.zarr", channel="w2", workers=2, attrs={"op": "smooth"})
    result, meta = open_zstack_with_metadata(out)
    expected = np.stack([ndimage.gaussian_filter(p.astype(np.float32), 1.5) for p in data[1]])
    np.testing.assert_allclose(result.compute(), expected, rtol=1e-6)
    assert meta.scale[-3:] == pytest.approx((2.0, 0.65, 0.65))
    assert sorted(p.read_bytes() for p in path.rglob("*") if p.is_file()) == before
    # the output remembers the channel it was made from: it can be opened by that name again
    assert meta.channel_names == ["w2"] and open_zstack(out, channel="w2").shape == (3, 64, 80)


def test_run_batch_refuses_to_overwrite_input(stack_path):
    path, _ = stack_path
    with pytest.raises(ValueError, match="input"):
        run_batch(_smooth, path, path, workers=1, overwrite=True)


def test_compute_small_result_on_cluster(stack_path):
    path, data = stack_path
    lazy = open_zstack(path, channel=0).mean(axis=(-2, -1))
    np.testing.assert_allclose(compute_with_client(lazy, workers=1), data[0].mean(axis=(-2, -1)))


def test_bad_worker_count():
    with pytest.raises(ValueError, match="workers"), dask_client(workers=0):
        pass


def test_unreachable_scheduler_and_bad_threads_are_clear_errors(stack_path, tmp_path, capsys):
    from napari_linblur.cli.main import main

    path, _ = stack_path
    assert main(["focus", str(path), "--channel", "w1", "--method", "brenner", "--scheduler",
                 "tcp://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "cannot connect to a dask scheduler" in err and "Traceback" not in err
    assert main(["evaluate", "deblur", "--threads", "0", "--out", str(tmp_path / "ev")]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err and not (tmp_path / "ev").exists()


def test_bench_filter_that_matches_nothing_is_an_error():
    import subprocess
    import sys
    from pathlib import Path

    run = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
    res = subprocess.run([sys.executable, str(run), "--only", "zzz_nomatch", "--out", "/nonexistent/x"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "matches no benchmark" in res.stderr


def _synthesize_reference(data, sharp, blurry, alphas, model):
    """The local run: ``synthesize_blur`` in this process, no cluster, one stack ``(..., Z, Y, X)`` per leading index,
    on one torch thread as the cluster's workers (dask starts them with one OpenMP thread; convolutions summed
    by another number of threads differ in the last bits)."""
    import torch

    import napari_linblur as nl

    a, c = data[..., sharp, :, :], data[..., blurry, :, :]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return np.stack([nl.synthesize_blur(a, c, al, model=model, device="cpu") for al in alphas], axis=-3)
    finally:
        torch.set_num_threads(threads)


def test_synthesize_on_local_cluster_keeps_channel_names(stack_path, tmp_path, tiny_models):
    from napari_linblur.cli.main import main

    path, data = stack_path
    out = tmp_path / "syn.zarr"
    assert main(["synthesize", str(path), str(out), "--sharp", "0", "--blurry", "2", "--alpha", "0.75", "0.25",
                 "--model", tiny_models["ae"], "--device", "cpu", "--workers", "1"]) == 0
    result, meta = open_zstack_with_metadata(out)
    assert meta.axes == "czyx" and result.shape == (2, 2, 64, 80) and result.dtype == np.float32
    # the same bytes as the local run, and the channel axis keeps its names (as `linblur deblur`)
    np.testing.assert_array_equal(result.compute(), _synthesize_reference(data, 0, 2, [0.75, 0.25],
                                                                          tiny_models["ae"]))
    assert meta.channel_names == ["w1", "w2"]
    assert open_zstack(out, channel="w2").shape == (2, 64, 80)
    # one chosen channel: a zyx output that records the channel it was made from
    one = tmp_path / "syn_w2.zarr"
    assert main(["synthesize", str(path), str(one), "--channel", "w2", "--sharp", "0", "--blurry", "2",
                 "--model", tiny_models["ae"], "--device", "cpu", "--workers", "1"]) == 0
    result, meta = open_zstack_with_metadata(one)
    assert meta.axes == "zyx" and meta.channel_names == ["w2"]
    np.testing.assert_array_equal(result.compute(), _synthesize_reference(data[1], 0, 2, [0.5], tiny_models["ae"]))


def test_synthesize_many_stacks_on_a_running_scheduler(tmp_path, tiny_models):
    from distributed import LocalCluster

    from napari_linblur.cli.main import main

    data = np.random.default_rng(1).integers(100, 4000, size=(3, 2, 3, 32, 40), dtype=np.uint16)
    path = write_ome_zarr(tmp_path / "tc.zarr", data, axes="tczyx", scale=(1, 1, 2.0, 0.65, 0.65),
                          channel_names=["w1", "w2"])
    out = tmp_path / "syn.zarr"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        assert main(["synthesize", str(path), str(out), "--sharp", "-1", "--blurry", "0", "--positions", "1",
                     "--model", tiny_models["ae"], "--device", "cpu", "--scheduler", cluster.scheduler_address]) == 0
        assert cluster.scheduler.transition_counter > 0  # the planes ran on that cluster
    result, meta = open_zstack_with_metadata(out)
    assert meta.axes == "tczyx" and meta.channel_names == ["w1", "w2"]
    assert meta.scale[-2:] == pytest.approx((0.65, 0.65))
    np.testing.assert_array_equal(result.compute(), _synthesize_reference(data, 2, 0, [0.5], tiny_models["ae"]))


def test_batch_cli_names_the_overwrite_option(stack_path, tmp_path, tiny_models, capsys):
    from napari_linblur.cli.main import main

    path, _ = stack_path
    out = tmp_path / "syn.zarr"
    args = ["synthesize", str(path), str(out), "--channel", "w1", "--sharp", "0", "--blurry", "2",
            "--model", tiny_models["ae"], "--device", "cpu", "--workers", "1"]
    assert main(args) == 0
    before = sorted(p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and "Traceback" not in err
    assert sorted(p.read_bytes() for p in out.rglob("*") if p.is_file()) == before
    assert main([*args, "--overwrite"]) == 0


def test_outputs_inside_the_input_store_are_refused_even_with_overwrite(stack_path, tmp_path):
    """An input given as one level of an OME-Zarr (``in.zarr/0``): a sibling (``in.zarr/1``, a pyramid level)
    or any other path inside the store is the input's, and is never written."""
    path, _ = stack_path
    before = sorted((str(p), p.read_bytes()) for p in path.rglob("*") if p.is_file())
    for out in (path / "1", path / "sig.zarr"):
        with pytest.raises(ValueError, match="refusing to overwrite its own input"):
            run_batch(_smooth, path / "0", out, workers=1, overwrite=True)
    assert sorted((str(p), p.read_bytes()) for p in path.rglob("*") if p.is_file()) == before


def test_a_relative_input_is_read_from_any_working_folder(stack_path, monkeypatch):
    """The lazy graph holds absolute paths: a dask worker started in another folder reads the same file."""
    path, data = stack_path
    monkeypatch.chdir(path.parent)
    lazy = open_zstack(path.name, channel="w1")
    monkeypatch.chdir("/")
    np.testing.assert_array_equal(lazy.compute(), data[0])


def test_synthesize_keeps_position_names_and_translation(tmp_path, tiny_models):
    from napari_linblur.cli.main import main

    data = np.random.default_rng(2).integers(100, 4000, size=(2, 3, 32, 40), dtype=np.uint16)
    path = write_ome_zarr(tmp_path / "p.zarr", data, axes="pzyx", scale=(1, 2.0, 0.65, 0.65),
                          translate=(0.0, 4.0, 10.0, 20.0), attrs={"linblur": {"fields": ["k06_s1", "k06_s2"]}})
    assert open_zstack_with_metadata(path)[1].extra["fields"] == ["k06_s1", "k06_s2"]
    out = tmp_path / "syn.zarr"
    assert main(["synthesize", str(path), str(out), "--sharp", "0", "--blurry", "2", "--model", tiny_models["ae"],
                 "--device", "cpu", "--workers", "1"]) == 0
    meta = open_zstack_with_metadata(out)[1]
    assert meta.translate == (0.0, 0.0, 10.0, 20.0) and meta.extra["fields"] == ["k06_s1", "k06_s2"]


def test_a_failing_plane_is_named_and_sigterm_removes_the_partial_output(tmp_path):
    """On a plate, an error says which plane; SIGTERM (a scheduler's time limit) unwinds like Ctrl-C: exit 143 and
    no half-written temporary folder left beside the output."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from napari_linblur.inference.validate import check_finite_plane

    def double(plane):
        check_finite_plane(plane, "img")
        return plane * 2

    stack = np.ones((3, 32, 32), np.float32)
    stack[2, 5, 5] = np.nan
    import dask.array as da

    for x in (stack, da.from_array(stack, chunks=(1, 32, 32))):
        with pytest.raises(ValueError, match=r"^img contains NaN.*\(at plane \(2,\) of the stack\)$"):
            np.asarray(map_planes(double, x))

    big = write_ome_zarr(tmp_path / "big.zarr", np.random.default_rng(0).random((64, 256, 256), np.float32),
                         axes="zyx")
    out = tmp_path / "out.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "napari_linblur.cli.main", "defocus-map", str(big), str(out),
                             "--workers", "1", "--device", "cpu"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any(".tmp-" in p.name for p in tmp_path.iterdir()):
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "interrupted by SIGTERM" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.zarr"]


def test_an_axis_of_unknown_meaning_is_kept_in_the_output(tmp_path):
    """A custom NGFF axis reads as '?'; the result of a batch run on it is written with that axis, not refused."""
    data = np.random.default_rng(3).integers(0, 1000, size=(2, 3, 16, 16), dtype=np.uint16)
    path = write_ome_zarr(tmp_path / "custom.zarr", data, axes="azyx")
    assert open_zstack_with_metadata(path)[1].axes == "?zyx"
    out = run_batch(_smooth, path, tmp_path / "out.zarr", workers=1)
    result, meta = open_zstack_with_metadata(out)
    assert meta.axes == "?zyx" and result.shape == data.shape
