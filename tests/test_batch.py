"""Batch runs on a real dask.distributed cluster: lazy in, OME-Zarr out, input untouched."""

import os

import numpy as np
import pytest
import tifffile
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
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # an in-process worker shares this process's torch threads: one, as the reference
    try:
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
            assert main(["synthesize", str(path), str(out), "--sharp", "-1", "--blurry", "0", "--positions", "1",
                         "--model", tiny_models["ae"], "--device", "cpu", "--scheduler",
                         cluster.scheduler_address]) == 0
            assert cluster.scheduler.transition_counter > 0  # the planes ran on that cluster
    finally:
        torch.set_num_threads(threads)
    result, meta = open_zstack_with_metadata(out)
    assert meta.axes == "tczyx" and meta.channel_names == ["w1", "w2"]
    assert meta.scale[-2:] == pytest.approx((0.65, 0.65))
    np.testing.assert_array_equal(result.compute(), _synthesize_reference(data, 2, 0, [0.5], tiny_models["ae"]))


def test_synthesize_names_the_file_and_plane_in_errors(tmp_path, tiny_models, capsys):
    """An error about a plane names the file and which plane (--sharp or --blurry), not synthesize_blur's img_a /
    img_c; a --positions value outside the two planes is named with them, not as d_b between d_a and d_c."""
    from napari_linblur.cli.main import main

    data = np.random.default_rng(0).random((5, 32, 32)).astype(np.float32)
    data[2, 3, 3] = np.nan
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, data)
    base = ["--model", tiny_models["ae"], "--device", "cpu", "--workers", "1", "--no-progress"]
    assert main(["synthesize", str(path), str(tmp_path / "a.zarr"), "--sharp", "3", "--blurry", "2", *base]) == 2
    err = capsys.readouterr().err
    assert f"{str(path) + ', plane 2 (--blurry)'!r} contains NaN" in err and "img_c" not in err, err
    assert main(["synthesize", str(path), str(tmp_path / "b.zarr"), "--sharp", "3", "--blurry", "0",
                 "--positions", "7", "1", *base]) == 2
    err = capsys.readouterr().err
    assert "--positions 7: a synthesized plane must lie strictly between --sharp 3 and --blurry 0" in err, err
    assert "d_b" not in err and not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()


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
    assert meta.extra["fields"] == ["k06_s1", "k06_s2"]
    # α = 0.5 between planes 0 and 2 lies at plane 1: z = 4 + 1 x 2 µm, where it overlays the input in napari
    assert meta.translate == (0.0, 6.0, 10.0, 20.0) and meta.scale[1] == 2.0 and meta.units[1] == "micrometer"
    assert _zarr_attrs(out)["linblur"]["positions"] == [1.0]
    # evenly spaced increasing positions: Z calibrated to their step; any other order: Z uncalibrated (the alphas
    # and positions are recorded), never the input's spacing for planes that are not the input's
    for extra, z_scale, z_unit, z_origin in ((["--positions", "0.5", "1", "1.5"], 1.0, "micrometer", 5.0),
                                             (["--alpha", "0.25", "0.5", "0.75"], 1.0, None, 0.0)):
        assert main(["synthesize", str(path), str(out), "--sharp", "0", "--blurry", "2", *extra, "--overwrite",
                     "--model", tiny_models["ae"], "--device", "cpu", "--workers", "1"]) == 0
        meta = open_zstack_with_metadata(out)[1]
        assert (meta.scale[1], meta.units[1], meta.translate[1]) == (z_scale, z_unit, z_origin), extra
    assert _zarr_attrs(out)["linblur"]["positions"] == [1.5, 1.0, 0.5]


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
        with pytest.raises(ValueError, match=r"^img contains NaN.*\(at plane 2 of the input\)$"):
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


def test_sigterm_repeated_during_the_cleanup_still_exits_143_and_leaves_nothing(tmp_path):
    """A cluster's time limit signals every process of the job, and ``timeout``/``srun`` forward it again: the
    second SIGTERM used to cut the first one's cleanup short (a temporary folder left, or exit 1 and a traceback)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    big = write_ome_zarr(tmp_path / "big.zarr", np.random.default_rng(0).random((64, 256, 256), np.float32),
                         axes="zyx")
    proc = subprocess.Popen([sys.executable, "-m", "napari_linblur.cli.main", "defocus-map", str(big),
                             str(tmp_path / "out.zarr"), "--workers", "1", "--device", "cpu"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any(".tmp-" in p.name for p in tmp_path.iterdir()):
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()
    for _ in range(4):  # the first, then more while it unwinds
        os.kill(proc.pid, signal.SIGTERM)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "interrupted by SIGTERM" in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.zarr"]


def test_an_axis_of_unknown_meaning_is_kept_in_the_output(tmp_path):
    """A custom NGFF axis reads as '?'; the result of a batch run on it is written with that axis, not refused."""
    data = np.random.default_rng(3).integers(0, 1000, size=(2, 3, 16, 16), dtype=np.uint16)
    path = write_ome_zarr(tmp_path / "custom.zarr", data, axes="azyx")
    assert open_zstack_with_metadata(path)[1].axes == "?zyx"
    out = run_batch(_smooth, path, tmp_path / "out.zarr", workers=1)
    result, meta = open_zstack_with_metadata(out)
    assert meta.axes == "?zyx" and result.shape == data.shape


# ------------------------------------------------------------------------------- concurrency of the writer


def _timed(block):
    """A slow plane that records when it ran: start and end time in its first two pixels."""
    import time

    start = time.time()
    time.sleep(0.4)
    out = np.zeros(block.shape, np.float64)
    out[..., 0, 0], out[..., 0, 1] = start, time.time()
    return out


def _timed_op(a):
    return a.map_blocks(_timed, dtype=np.float64)


def _max_overlap(times) -> int:
    """Most planes running at the same moment, from (start, end) rows (an end before a start at the same time)."""
    events = sorted([(float(s), 1) for s, _ in times] + [(float(e), -1) for _, e in times])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


@pytest.fixture(scope="module")
def scheduler():
    """A running in-process cluster of one worker with 8 threads (as a remote ``--scheduler``)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=8, processes=False, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def test_a_batch_run_computes_as_many_planes_at_once_as_the_cluster_has_threads(tmp_path, scheduler):
    """8 worker threads, 16 planes: 8 planes run at once (it used to be 4, each group waiting for its slowest)."""
    path = write_ome_zarr(tmp_path / "in.zarr", np.zeros((16, 16, 16), np.uint16), axes="zyx")
    out = run_batch(_timed_op, path, tmp_path / "out.zarr", scheduler=scheduler)
    times = open_zstack(out)[:, 0, :2].compute()
    assert _max_overlap(times) >= 6


def test_max_parallel_bounds_the_planes_a_local_scheduler_computes_at_once(tmp_path):
    """A network plane runs on all of torch's threads: the GUI writes such planes one at a time (max_parallel=1),
    where the threaded scheduler ran one per core (cores x torch threads at once)."""
    import dask
    import dask.array as da

    lazy = _timed_op(da.zeros((6, 16, 16), chunks=(1, 16, 16)))
    with dask.config.set(scheduler="threads", num_workers=4):
        wide = write_ome_zarr(tmp_path / "wide.zarr", lazy, axes="zyx", pyramid_levels=1)
        one = write_ome_zarr(tmp_path / "one.zarr", lazy, axes="zyx", pyramid_levels=1, max_parallel=1)
    assert _max_overlap(open_zstack(wide)[:, 0, :2].compute()) >= 3
    assert _max_overlap(open_zstack(one)[:, 0, :2].compute()) == 1
    with pytest.raises(ValueError, match="max_parallel: need an integer >= 1"):
        write_ome_zarr(tmp_path / "bad.zarr", lazy, axes="zyx", max_parallel=0)


# ------------------------------------------------------------------------------ relative model paths


def test_relative_model_paths_load_on_workers_started_in_another_folder(tmp_path, tiny_models, monkeypatch):
    """Workers of a scheduler started elsewhere resolve a relative path from their own folder: the command line
    sends them the absolute path. A shipped name stays a name, even beside a file of that name."""
    import os
    import shutil
    from pathlib import Path

    from distributed import Client, LocalCluster

    from napari_linblur.cli.main import main

    (tmp_path / "m").mkdir()
    for task, name in (("defocus", "defocus-default"), ("deblur", "deblur-mine")):
        for suffix in (".safetensors", ".json"):
            src = Path(tiny_models[task]).with_suffix(suffix)
            if src.exists():
                shutil.copy(src, tmp_path / "m" / f"{name}{suffix}")
    data = np.random.default_rng(4).integers(100, 4000, size=(2, 32, 40), dtype=np.uint16)
    write_ome_zarr(tmp_path / "in.zarr", data, axes="zyx")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(tmp_path)
    with (LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
          Client(cluster) as client):
        client.run(os.chdir, str(elsewhere))
        assert set(client.run(os.getcwd).values()) == {str(elsewhere)}
        address = cluster.scheduler_address
        assert main(["defocus-map", "in.zarr", "dm.zarr", "--model", "m/defocus-default.safetensors",
                     "--device", "cpu", "--tile", "32", "--scheduler", address]) == 0
        assert main(["deblur", "in.zarr", "db.zarr", "--method", "network", "--model", "m/deblur-mine.safetensors",
                     "--device", "cpu", "--scheduler", address]) == 0
        # the library: the lazy graph holds the model's absolute path, as it holds the input's
        from napari_linblur.inference.defocus_ops import estimate_defocus

        lazy = estimate_defocus(open_zstack("in.zarr"), model="m/defocus-default.safetensors", device="cpu", tile=32)
        np.testing.assert_allclose(client.compute(lazy).result(), open_zstack("dm.zarr").compute(), rtol=1e-5,
                                   atol=1e-5)
    for out in ("dm.zarr", "db.zarr"):
        result = open_zstack(tmp_path / out).compute()
        assert result.shape == data.shape and np.isfinite(result).all()
    model = _zarr_attrs(tmp_path / "dm.zarr")["linblur"]["model"]
    assert model == str(tmp_path / "m" / "defocus-default.safetensors")
    from napari_linblur.models.registry import model_arg

    (tmp_path / "defocus-default").write_text("not a model")
    assert model_arg("defocus-default") == "defocus-default"
    assert model_arg("m/defocus-default.safetensors") == str(tmp_path / "m" / "defocus-default.safetensors")
    assert model_arg("m/missing.safetensors") == "m/missing.safetensors"  # left to the loader's message


def _zarr_attrs(path):
    import zarr

    return zarr.open_group(str(path), mode="r").attrs.asdict()


# ------------------------------------------------------------------ metadata kept in batch outputs


def test_custom_ngff_axes_keep_their_names_types_and_units_in_outputs(tmp_path, scheduler, tiny_models):
    import zarr

    from napari_linblur.cli.main import main

    data = np.random.default_rng(5).integers(0, 1000, size=(2, 2, 3, 16, 20), dtype=np.uint16)
    root = zarr.open_group(str(tmp_path / "in.zarr"), mode="w", zarr_format=3)
    root.create_array("0", shape=data.shape, chunks=(1, 1, 1, 16, 20), dtype=data.dtype)[:] = data
    axes_md = [{"name": "angle", "type": "angle", "unit": "degree"}, {"name": "time", "type": "time", "unit": "second"},
               *({"name": a, "type": "space", "unit": "micrometer"} for a in "zyx")]
    root.attrs.update({"ome": {"version": "0.5", "multiscales": [{"axes": axes_md, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [45.0, 3.0, 2.0, 0.5, 0.5]}]}]}]}})
    out = run_batch(_smooth, tmp_path / "in.zarr", tmp_path / "out.zarr", scheduler=scheduler)
    written = _zarr_attrs(out)["ome"]["multiscales"][0]["axes"]
    # NGFF order (time first), every name, type and unit as in the input (it used to be {'name': 'a', ...}, 't')
    assert written[:2] == [axes_md[1], axes_md[0]] and written[2:] == axes_md[2:]
    meta = open_zstack_with_metadata(out)[1]
    assert meta.axes == "?tzyx" and meta.axis_names == ("angle", "time", "z", "y", "x")
    models = pytest.importorskip("ome_zarr_models.v05.image")
    models.Image.from_zarr(zarr.open_group(str(out), mode="r"))  # valid NGFF 0.5
    syn = tmp_path / "syn.zarr"
    assert main(["synthesize", str(tmp_path / "in.zarr"), str(syn), "--sharp", "0", "--blurry", "2",
                 "--model", tiny_models["ae"], "--device", "cpu", "--scheduler", scheduler]) == 0
    assert [a["name"] for a in _zarr_attrs(syn)["ome"]["multiscales"][0]["axes"]] == ["time", "angle", "z", "y", "x"]


def test_an_input_without_z_gives_an_output_without_z(tmp_path, scheduler):
    """A (T, C, Y, X) time-lapse keeps its axes: the reader's one-plane Z is not written (in napari a (T, Y, X)
    input beside a (T, Z, Y, X) output put the time points on the Z slider), and the channel chosen by index from
    unnamed channels is recorded, with the input's absolute path."""
    data = np.random.default_rng(8).integers(0, 1000, size=(2, 2, 16, 20), dtype=np.uint16)
    path = write_ome_zarr(tmp_path / "tcyx.zarr", data, axes="tcyx", scale=(5.0, 1.0, 0.5, 0.5),
                          translate=(10.0, 0.0, 1.0, 2.0), units=("second", None, "micrometer", "micrometer"))
    assert open_zstack_with_metadata(path)[1].axes == "tczyx"  # the reader adds Z ...
    out = run_batch(_smooth, path, tmp_path / "out.zarr", scheduler=scheduler)
    ms = _zarr_attrs(out)["ome"]["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["t", "c", "y", "x"]  # ... and the output leaves it out again
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [5.0, 1.0, 0.5, 0.5]
    result, meta = open_zstack_with_metadata(out)
    np.testing.assert_allclose(result[:, :, 0].compute(), _smooth(data.astype(np.float32)), rtol=1e-5)
    assert meta.translate == (10.0, 0.0, 0.0, 1.0, 2.0) and meta.extra.get("z_added")
    one = run_batch(_smooth, path, tmp_path / "one.zarr", channel=1, scheduler=scheduler)
    attrs = _zarr_attrs(one)["linblur"]
    assert attrs["channel"] == 1 and attrs["source"] == str(path.absolute())


def _bbbc006_folder(root, planes=(14, 15, 16)):
    """A small BBBC006 folder (flat layout, 2 sites x 2 channels) whose last plane is the sharpest."""
    rng = np.random.default_rng(6)
    uuid = "2667264a-6432-4f7e-bf58-625a1319a1c9"
    for k, z in enumerate(planes):
        for s in (1, 2):
            for w in (1, 2):
                img = 1000 + (k + 1) ** 3 * 50 * rng.random((24, 32))
                tifffile.imwrite(root / f"{z:02d}_mcf-z-stacks-03212011_k06_s{s}_w{w}{uuid}.tif", img.astype(np.uint16))
    return root


def test_bbbc006_plane_numbers_are_reported_and_kept_in_outputs(tmp_path, scheduler, capsys):
    import csv
    import json

    from napari_linblur.cli.main import main

    folder = tmp_path / "bb"
    folder.mkdir()
    _bbbc006_folder(folder)
    js, cs = tmp_path / "f.json", tmp_path / "f.csv"
    assert main(["focus", str(folder), "--channel", "w2", "--method", "brenner", "--scheduler", scheduler,
                 "--json", str(js), "--csv", str(cs)]) == 0
    printed = capsys.readouterr().out
    assert "BBBC006 planes 14, 15, 16" in printed and "k06_s1: best plane 2 (BBBC006 plane 16)" in printed
    report = json.loads(js.read_text())
    assert report["bbbc006_planes"] == [14, 15, 16]
    assert report["stacks"]["k06_s2"]["best_plane"] == 2 and report["stacks"]["k06_s2"]["best_bbbc006_plane"] == 16
    rows = list(csv.DictReader(cs.read_text().splitlines()))
    assert [(r["plane"], r["bbbc006_plane"], r["best_bbbc006_plane"]) for r in rows[:3]] == [
        ("0", "14", "16"), ("1", "15", "16"), ("2", "16", "16")]
    # a batch output records them, and reads them back: results map to BBBC006 planes
    out = run_batch(_smooth, folder, tmp_path / "out.zarr", channel="w2", scheduler=scheduler)
    assert _zarr_attrs(out)["linblur"]["planes"] == [14, 15, 16]
    assert open_zstack_with_metadata(out)[1].extra["planes"] == [14, 15, 16]
    assert main(["focus", str(out), "--method", "brenner", "--scheduler", scheduler]) == 0
    assert "(BBBC006 plane 16)" in capsys.readouterr().out


def test_local_cluster_workers_do_not_trim_memory_after_every_free():
    # distributed sets MALLOC_TRIM_THRESHOLD_=65536 in its workers (and in the process that starts them): torch
    # then allocates its tile buffers again for every tile (1.3-1.5x slower maps, benchmarks/bench_batch.py). A fresh
    # process, so that no cluster started by another test has put it in this one's environment.
    import subprocess
    import sys

    script = (
        "import os\n"
        "from napari_linblur.batch import dask_client\n"
        "with dask_client(workers=1) as c:\n"
        "    print(sorted(set(c.run(os.environ.get, 'MALLOC_TRIM_THRESHOLD_').values()), key=str))\n"
        "    print(sorted(set(c.run(os.environ.get, 'OMP_NUM_THREADS').values())))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                         check=True).stdout.split("\n")
    assert out[0] == "[None]"  # glibc's own default
    assert out[1] == "['1']"  # distributed's other worker settings are kept: one BLAS/OpenMP thread per worker


@pytest.mark.parametrize("op", ["deblur", "synthesize_blur", "estimate_defocus"])
def test_a_planes_task_carries_the_models_name_not_its_weights(tiny_models, op):
    """A batch submits one task per plane: each carried a pickled copy of the network (deblur 937 KiB, synthesize
    268 KiB per plane, held by the client and a shared scheduler) until session 22. Now the task names the model and
    the worker loads it once; a module the caller passes is still carried (it has no name), and both give the
    numpy path's result after a pickle round trip (as a worker process receives them)."""
    import cloudpickle
    import dask
    import dask.array as da
    import torch

    import napari_linblur as nl
    from napari_linblur.models import registry

    task = {"deblur": "deblur", "synthesize_blur": "ae", "estimate_defocus": "defocus"}[op]

    def run(x, model):
        if op == "synthesize_blur":
            return nl.synthesize_blur(x, x[::-1], 0.5, model=model, device="cpu")
        return getattr(nl, op)(x, model=model, device="cpu")

    stack = np.random.default_rng(0).poisson(200, (3, 48, 48)).astype(np.float32)
    module = registry.load_model(tiny_models[task], device="cpu")
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    for model, carried in ((tiny_models[task], False), (module, True)):
        lazy = run(da.from_array(stack, chunks=(1, 48, 48)), model)
        (one,) = dask.optimize(lazy[1:2])
        size = len(cloudpickle.dumps(dict(one.__dask_graph__())))
        assert (size > weights) == carried, (size, weights)
        received = cloudpickle.loads(cloudpickle.dumps(one))
        with torch.no_grad():
            expected = run(stack, model)[1:2]
        np.testing.assert_allclose(dask.compute(received, scheduler="sync")[0], expected, rtol=1e-5, atol=1e-5)


def test_a_model_given_by_a_relative_path_is_carried_as_its_absolute_path(tiny_models, tmp_path, monkeypatch):
    """A worker started in another folder loads the same file (the task carries the name, not the weights)."""
    from pathlib import Path

    import cloudpickle
    import dask
    import dask.array as da

    import napari_linblur as nl

    src = Path(tiny_models["deblur"])
    monkeypatch.chdir(src.parent)
    lazy = nl.deblur(da.zeros((2, 32, 32), chunks=(1, 32, 32)) + 100.0, model=src.name, device="cpu")
    monkeypatch.chdir(tmp_path)  # the worker's folder, where the task arrives pickled
    received = cloudpickle.loads(cloudpickle.dumps(lazy))
    assert dask.compute(received, scheduler="sync")[0].shape == (2, 32, 32)


def test_ctrl_c_to_the_whole_terminal_group_is_one_line(tmp_path):
    """Ctrl-C in a terminal reaches every process of the foreground group, the local cluster's workers too: each
    printed a KeyboardInterrupt traceback (67 lines) over the command's "interrupted". The workers now leave the
    interrupt to the command, which closes the cluster: one line, exit 130, nothing written."""
    import signal
    import subprocess
    import sys
    import time

    big = write_ome_zarr(tmp_path / "big.zarr", np.random.default_rng(0).random((64, 256, 256), np.float32),
                         axes="zyx")
    out = tmp_path / "out.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "napari_linblur.cli.main", "defocus-map", str(big), str(out),
                             "--workers", "2", "--device", "cpu", "--no-progress"], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True,  # its own group: a terminal's
                            # Ctrl-C acts as in a terminal even when these tests run in the background (where a shell
                            # starts every command with SIGINT ignored, and Python keeps it so)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not any(".tmp-" in p.name for p in tmp_path.iterdir()):
        time.sleep(0.2)
    time.sleep(1.0)  # the workers are computing
    assert proc.poll() is None, proc.stderr.read()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines() == ["linblur defocus-map: interrupted"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.zarr"]


def test_a_server_that_is_not_a_dask_scheduler_is_named_not_waited_on(stack_path, scheduler, capsys, monkeypatch):
    """--scheduler at a dashboard port waited forever (distributed's handshake has no timeout), and at a web server
    answering HTTP said "not enough memory (3 EiB)". Both are now one line naming the address; a real scheduler
    passes the check."""
    import socket
    import threading

    from napari_linblur import batch
    from napari_linblur.cli.main import main

    path, _ = stack_path
    monkeypatch.setattr(batch, "SCHEDULER_HANDSHAKE_S", 1.0)
    for reply, says in ((None, "sent no dask handshake in 1 s"), (b"HTTP/1.1 400 Bad Request\r\n\r\n", "HTTP")):
        server = socket.create_server(("127.0.0.1", 0))
        port = server.getsockname()[1]

        def serve(server=server, reply=reply):
            conn, _ = server.accept()
            with conn:
                if reply is not None:
                    conn.sendall(reply)
                conn.settimeout(5)
                try:
                    conn.recv(1)  # held open until the client goes
                except OSError:
                    pass

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        assert main(["focus", str(path), "--channel", "w1", "--method", "brenner", "--scheduler",
                     f"tcp://127.0.0.1:{port}"]) == 2
        err = capsys.readouterr().err
        assert f"--scheduler tcp://127.0.0.1:{port}" in err and says in err and "not a dask scheduler" in err, err
        assert "memory" not in err and "Traceback" not in err
        t.join(10)
        server.close()
    batch.check_scheduler_speaks_first(scheduler)  # a dask scheduler speaks first: no error


def test_a_scheduler_lost_mid_run_is_one_line_and_exit_2(stack_path, capsys, monkeypatch):
    """The scheduler killed mid-run (a job's time limit) raised distributed's FutureCancelledError: a traceback and
    exit 1, the code of `focus --on-error skip`'s partial failures. Now one line, exit 2."""
    import contextlib

    from distributed.client import FutureCancelledError

    from napari_linblur import batch
    from napari_linblur.cli.main import main

    @contextlib.contextmanager
    def lost(*args, **kwargs):
        raise FutureCancelledError("x", reason="scheduler-connection-lost")
        yield

    monkeypatch.setattr(batch, "dask_client", lost)
    path, _ = stack_path
    assert main(["focus", str(path), "--channel", "w1", "--method", "brenner", "--scheduler", "tcp://h:1"]) == 2
    err = capsys.readouterr().err
    assert "the dask scheduler was lost or cancelled the work while computing" in err and "Traceback" not in err
    # a connection closed under the run: distributed's CommClosedError is an OSError, said the same way
    from distributed.comm.core import CommClosedError

    @contextlib.contextmanager
    def closed(*args, **kwargs):
        raise CommClosedError("in <TCP (closed) ConnectionPool.gather>: Stream is closed")
        yield

    monkeypatch.setattr(batch, "dask_client", closed)
    assert main(["focus", str(path), "--channel", "w1", "--method", "brenner", "--scheduler", "tcp://h:1"]) == 2
    assert "the dask scheduler was lost" in capsys.readouterr().err


def test_a_plane_file_gone_where_it_is_read_is_not_called_corrupt(tmp_path, scheduler):
    """A TIFF plane that workers cannot see (a path local to the client's machine) read as "not a readable TIFF
    (corrupt or truncated file?)": it is now "not found", and on a dask worker says that every worker must see the
    input at the same path."""
    import tifffile
    from distributed import Client

    from napari_linblur.io.readers import open_zstack

    folder = tmp_path / "tifs"
    folder.mkdir()
    for z in range(3):
        tifffile.imwrite(folder / f"plane_{z:02d}.tif", np.full((16, 16), z, np.uint16))
    stack = open_zstack(folder)
    (folder / "plane_01.tif").unlink()
    with pytest.raises(ValueError, match="plane_01.tif: not found when it was read") as info:
        stack.compute()
    assert "corrupt" not in str(info.value)
    with Client(scheduler) as client, pytest.raises(ValueError, match="not found on the dask worker at .* every "
                                                                      "worker must see the input at the same path"):
        client.compute(stack).result()
