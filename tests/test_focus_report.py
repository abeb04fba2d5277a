"""``linblur focus`` reports for spreadsheets (named stacks, well/site/channel, units, flags, provenance), report
files that never overwrite silently, progress on stderr, and the batch client's cluster handling (no workers, no
dashboard port)."""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage

from defocus_helpers import save_tiny_model
from napari_linblur import batch
from napari_linblur.cli.apply_defocus import check_report_paths, focus_stacks, focus_table, stack_labels
from napari_linblur.cli.main import main
from napari_linblur.io.omezarr import write_ome_zarr
from napari_linblur.io.readers import open_zstack_with_metadata

UUID = "2667264a-6432-4f7e-bf58-625a1319a1c9"




@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("m"))


def _blobs(blur: float, rng) -> np.ndarray:
    """Bright squares on a dim background, blurred by ``blur`` px, with Poisson noise: cells in a field."""
    img = np.full((32, 40), 100.0)
    img[6:14, 8:16] = img[18:26, 22:32] = 2000.0
    return rng.poisson(ndimage.gaussian_filter(img, blur)).astype(np.uint16)


def _plate(root: Path) -> Path:
    """A BBBC006 folder (planes 14-16, channels w1 and w2): site 1 holds cells in focus at plane 15 (the middle),
    site 2 is an empty field (noise only)."""
    rng = np.random.default_rng(0)
    root.mkdir()
    for k, z in enumerate((14, 15, 16)):
        for w in (1, 2):
            cells = _blobs((3.0, 0.3, 3.0)[k], rng)
            empty = rng.poisson(200, (32, 40)).astype(np.uint16)
            for s, img in ((1, cells), (2, empty)):
                tifffile.imwrite(root / f"{z:02d}_mcf-z-stacks-03212011_k06_s{s}_w{w}{UUID}.tif", img)
    return root


# ------------------------------------------------------------------------------------------ report content


def test_plate_report_names_stacks_and_has_spreadsheet_columns(tmp_path, scheduler, capsys):
    plate = _plate(tmp_path / "plate")
    js, cs = tmp_path / "focus.json", tmp_path / "focus.csv"
    assert main(["focus", str(plate), "--method", "brenner", "--scheduler", scheduler, "--json", str(js),
                 "--csv", str(cs)]) == 0
    out = capsys.readouterr().out
    # the channel names, not k06_s1[0] / k06_s1[1]; flags on the stack's line, explained once below
    assert "k06_s1 w1: best plane 1 (BBBC006 plane 15)  curve:" in out
    assert "k06_s1 w2: best plane 1 (BBBC006 plane 15)  curve:" in out
    assert "k06_s2 w1: best plane" in out and "[no signal]" in out.split("k06_s2 w1:")[1].splitlines()[0]
    assert "[no signal] 2 of 4 stacks" in out
    assert "[0]" not in out

    rows = list(csv.DictReader(cs.read_text().splitlines()))
    assert list(rows[0]) == ["stack", "well", "site", "channel", "plane", "bbbc006_plane", "score", "best_plane",
                             "best_bbbc006_plane", "best_at_edge", "has_signal"]
    assert len(rows) == 12
    first = rows[:3]
    assert {r["stack"] for r in first} == {"k06_s1 w1"}
    assert [(r["well"], r["site"], r["channel"], r["plane"], r["bbbc006_plane"]) for r in first] == [
        ("k06", "1", "w1", "0", "14"), ("k06", "1", "w1", "1", "15"), ("k06", "1", "w1", "2", "16")]
    assert {(r["best_plane"], r["best_bbbc006_plane"], r["best_at_edge"], r["has_signal"]) for r in first} == {
        ("1", "15", "False", "True")}
    assert {r["has_signal"] for r in rows if r["site"] == "2"} == {"False"}

    report = json.loads(js.read_text())
    assert report["input"] == str(plate.resolve()) and report["method"] == "brenner" and report["model"] is None
    assert report["channel"] is None and report["channels"] == ["w1", "w2"] and report["n_planes"] == 3
    assert "higher = sharper" in report["score"]
    s = report["stacks"]["k06_s1 w2"]
    assert (s["well"], s["site"], s["channel"], s["best_plane"], s["best_bbbc006_plane"]) == ("k06", 1, "w2", 1, 15)
    assert s["best_at_edge"] is False and s["has_signal"] is True and len(s["scores"]) == 3
    assert report["stacks"]["k06_s2 w1"]["has_signal"] is False
    # the CSV's and the JSON's names agree: best_plane in both
    assert float(first[1]["score"]) == pytest.approx(report["stacks"]["k06_s1 w1"]["scores"][1])

    # one channel chosen: the stacks are the fields, and the channel is still a column (and in the JSON)
    js2 = tmp_path / "w2.json"
    assert main(["focus", str(plate), "--channel", "w2", "--method", "brenner", "--scheduler", scheduler,
                 "--json", str(js2)]) == 0
    assert "k06_s1: best plane 1 (BBBC006 plane 15)" in capsys.readouterr().out
    report2 = json.loads(js2.read_text())
    assert report2["channel"] == "w2" and set(report2["stacks"]) == {"k06_s1", "k06_s2"}
    assert report2["stacks"]["k06_s1"]["channel"] == "w2" and report2["stacks"]["k06_s1"]["site"] == 1


def test_defocus_report_names_its_unit_and_model(tmp_path, scheduler, tiny_model, capsys):
    from napari_linblur.models.registry import sha256_file

    rng = np.random.default_rng(1)
    stack = np.stack([_blobs(b, rng) for b in (0.3, 2.0, 4.0)])  # sharpest first: at the edge
    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, stack, imagej=True, metadata={"axes": "ZYX"})
    js, cs = tmp_path / "d.json", tmp_path / "d.csv"
    assert main(["focus", str(tif), "--model", str(tiny_model), "--device", "cpu",
                 "--scheduler", scheduler, "--json", str(js), "--csv", str(cs)]) == 0
    out = capsys.readouterr().out
    assert "median σ px" in out and "stack.tif: best plane" in out
    report = json.loads(js.read_text())
    assert report["model"] == {"name": str(tiny_model), "sha256": sha256_file(tiny_model)}
    assert report["input"] == str(tif) and report["method"] == "defocus" and "median sigma" in report["score"]
    (name, s), = report["stacks"].items()
    assert name == "stack.tif"  # a lone stack is named by its file
    assert s["median_sigma_px"] == pytest.approx([-v for v in s["scores"]])
    assert s["best_plane"] == int(np.argmax(s["scores"])) and s["has_signal"] is True
    rows = list(csv.DictReader(cs.read_text().splitlines()))
    assert list(rows[0]) == ["stack", "plane", "median_sigma_px", "best_plane", "best_at_edge", "has_signal"]
    assert [float(r["median_sigma_px"]) for r in rows] == pytest.approx(s["median_sigma_px"])
    assert rows[0]["best_at_edge"] == str(s["best_plane"] in (0, 2))


def test_stack_names_of_other_layouts(tmp_path):
    data = np.zeros((2, 3, 8, 8), np.uint16)
    _, meta = open_zstack_with_metadata(write_ome_zarr(tmp_path / "c.zarr", data, axes="czyx",
                                                       channel_names=["DAPI", "GFP"]))
    assert [info for _, info in stack_labels(meta, (2,))] == [{"stack": "DAPI", "channel": "DAPI"},
                                                              {"stack": "GFP", "channel": "GFP"}]
    _, meta = open_zstack_with_metadata(write_ome_zarr(tmp_path / "t.zarr", data, axes="tzyx"))
    assert [info["stack"] for _, info in stack_labels(meta, (2,))] == ["t0", "t1"]
    one = tmp_path / f"15_mcf-z-stacks-03212011_b02_s3_w1{UUID}.tif"
    tifffile.imwrite(one, np.zeros((8, 8), np.uint16))
    _, meta = open_zstack_with_metadata(one)
    assert stack_labels(meta, (), "x.tif") == [((), {"stack": "b02_s3", "well": "b02", "site": 3, "channel": "w1"})]
    # flags: a best plane inside the stack is not at the edge; one plane is always at the edge
    stacks = focus_stacks([[1.0, 3.0, 2.0], [3.0, 2.0, 1.0]], None, method="brenner", has_signal=[True, False])
    assert [(s["best_plane"], s["best_at_edge"], s["has_signal"]) for s in stacks] == [(1, False, True),
                                                                                    (0, True, False)]
    assert focus_stacks([5.0], None)[0]["best_at_edge"] is True
    assert list(focus_table([[-1.0, -2.0]], None, method="defocus")[0]) == [
        "stack", "plane", "median_sigma_px", "best_plane", "best_at_edge"]


# ------------------------------------------------------------------------------------------- report files


def test_report_files_refuse_overwriting_unless_asked(tmp_path, scheduler, capsys):
    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, _blobs(0.5, np.random.default_rng(2))[None].repeat(2, axis=0))
    cs = tmp_path / "focus.csv"
    cs.write_text("precious")
    base = ["focus", str(tif), "--method", "brenner", "--scheduler", scheduler, "--csv", str(cs)]
    assert main(base) == 2
    assert "already exists: pass --overwrite" in capsys.readouterr().err and cs.read_text() == "precious"
    assert main([*base, "--overwrite"]) == 0
    assert cs.read_text().startswith("stack,plane,score,")
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]  # written atomically: no temporary left


def test_reports_may_be_new_files_inside_an_input_folder_but_never_an_input_file(tmp_path, scheduler, capsys):
    plate = _plate(tmp_path / "plate")
    inputs = sorted(plate.iterdir())
    before = {p: p.read_bytes() for p in inputs}
    cs = plate / "focus.csv"
    argv = ["focus", str(plate), "--channel", "w1", "--method", "brenner", "--scheduler", scheduler, "--csv", str(cs)]
    assert main(argv) == 0, capsys.readouterr().err
    first = cs.read_text()
    # the folder still reads as before (the report is no image), and a second run may replace its own report
    assert main([*argv, "--overwrite"]) == 0 and cs.read_text() == first
    capsys.readouterr()
    victim = inputs[0]
    for path, says in ((victim, "would overwrite the input"), (plate / "new.tif", "would be read as an image")):
        assert main(["focus", str(plate), "--method", "brenner", "--scheduler", scheduler, "--csv", str(path),
                     "--overwrite"]) == 2
        assert says in capsys.readouterr().err
    assert {p: p.read_bytes() for p in inputs} == before and not (plate / "new.tif").exists()

    # the checks themselves, no cluster needed: the input file, anything in a zarr store, a file beside the input
    check_report_paths(victim, csv=str(tmp_path / "beside.csv"))
    with pytest.raises(ValueError, match="would overwrite the input"):
        check_report_paths(victim, overwrite=True, csv=str(victim))
    store = write_ome_zarr(tmp_path / "in.zarr", np.zeros((2, 8, 8), np.uint16), axes="zyx")
    for source in (store, store / "0", store / "zarr.json"):
        with pytest.raises(ValueError, match="would overwrite the input"):
            check_report_paths(source, json=str(store / "focus.json"))
    check_report_paths(store, json=str(tmp_path / "focus.json"))
    link = plate / "link.csv"
    link.symlink_to(victim)
    with pytest.raises(ValueError, match="would overwrite the input"):
        check_report_paths(plate, overwrite=True, csv=str(link))


# ----------------------------------------------------------------------------------------------- progress


def test_progress_on_stderr_for_focus_and_defocus_map(tmp_path, scheduler, tiny_model, monkeypatch, capsys):
    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, np.stack([_blobs(b, np.random.default_rng(3)) for b in (0.3, 2.0, 4.0)]), imagej=True,
                    metadata={"axes": "ZYX"})
    # not a terminal (as under pytest): no bar unless asked
    assert main(["focus", str(tif), "--method", "brenner", "--scheduler", scheduler]) == 0
    assert "plane/s" not in capsys.readouterr().err
    monkeypatch.setattr(batch, "_stderr_is_terminal", lambda: True)
    assert main(["focus", str(tif), "--method", "brenner", "--scheduler", scheduler]) == 0
    err = capsys.readouterr().err
    assert "focus: 100%" in err and "3/3" in err and "plane" in err
    assert main(["focus", str(tif), "--method", "brenner", "--scheduler", scheduler, "--no-progress"]) == 0
    assert "3/3" not in capsys.readouterr().err
    out = tmp_path / "sigma.zarr"
    assert main(["defocus-map", str(tif), str(out), "--model", str(tiny_model), "--device", "cpu",
                 "--scheduler", scheduler]) == 0
    err = capsys.readouterr().err
    assert "defocus-map sigma.zarr: 100%" in err and "3/3" in err and "block" in err
    assert main(["defocus-map", str(tif), str(tmp_path / "s2.zarr"), "--model", str(tiny_model), "--device", "cpu",
                 "--scheduler", scheduler, "--no-progress"]) == 0
    assert "block" not in capsys.readouterr().err


def test_compute_with_progress_raises_a_failing_plane(scheduler):
    import dask.array as da

    def boom(b):
        if b.sum() > 0:
            raise ValueError("bad plane")
        return b

    lazy = da.from_array(np.arange(4.0), chunks=1).map_blocks(boom)
    with pytest.raises(ValueError, match="bad plane"):
        batch.compute_with_client(lazy, scheduler=scheduler, progress=True)
    np.testing.assert_array_equal(batch.compute_with_client(da.zeros(4, chunks=1), scheduler=scheduler,
                                                            progress=True), np.zeros(4))


# ------------------------------------------------------------------------------------------ cluster handling


def test_a_scheduler_without_workers_is_reported_while_the_run_waits(monkeypatch, capsys):
    import dask.array as da
    from distributed import LocalCluster

    monkeypatch.setattr(batch, "NO_WORKERS_WARNING_S", 0.5)
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0",
                      scheduler_kwargs={"dashboard": False}) as cluster:
        def join_later():
            while "no workers yet" not in capsys.readouterr().err:  # noqa: ASYNC110 - a plain thread
                time.sleep(0.1)
            cluster.scale(1)

        helper = threading.Thread(target=join_later, daemon=True)
        helper.start()
        result = batch.compute_with_client(da.ones(3, chunks=1).sum(), scheduler=cluster.scheduler_address)
        helper.join(timeout=30)
    assert result == 3 and not helper.is_alive()


def test_a_cluster_that_loses_all_its_workers_is_reported_once_per_outage(capsys):
    """The watcher used to stop once a worker had joined: a run whose workers all left (killed, a job's time limit)
    waited silently for ever. Each outage is said once, and a worker joining ends it."""
    from distributed import Client, LocalCluster

    def wait_for(text: str, seen: list[str]) -> None:
        deadline = time.monotonic() + 30
        while text not in "".join(seen) and time.monotonic() < deadline:
            seen.append(capsys.readouterr().err)
            time.sleep(0.1)
        assert text in "".join(seen), seen

    with (LocalCluster(n_workers=1, processes=False, dashboard_address=":0",
                       scheduler_kwargs={"dashboard": False}) as cluster, Client(cluster) as client):
        client.wait_for_workers(1)
        address = cluster.scheduler_address
        with batch._warn_while_no_workers(client, address, 0.3):
            time.sleep(0.8)
            assert "workers" not in capsys.readouterr().err  # workers present: nothing said
            for _ in range(2):  # two outages, each said once
                cluster.scale(0)
                seen: list[str] = []
                wait_for("has lost all its workers", seen)
                time.sleep(0.8)
                seen.append(capsys.readouterr().err)
                assert "".join(seen).count("lost all its workers") == 1 and "no workers yet" not in "".join(seen)
                cluster.scale(1)
                client.wait_for_workers(1)
                time.sleep(0.6)


def test_a_scheduler_with_workers_draws_no_message(scheduler, monkeypatch, capsys):
    import dask.array as da

    monkeypatch.setattr(batch, "NO_WORKERS_WARNING_S", 0.2)
    with batch.dask_client(scheduler) as client:
        assert client.compute(da.ones(2).sum()).result() == 2
        time.sleep(0.6)
    assert "no workers" not in capsys.readouterr().err


def test_local_cluster_takes_no_dashboard_port_and_raises_the_large_graph_threshold(recwarn):
    import socket

    import dask

    taken = socket.socket()
    try:
        try:
            taken.bind(("0.0.0.0", 8787))  # another dask's dashboard, say
            taken.listen()
        except OSError:
            pass  # something else holds it already: the same situation
        with batch.dask_client(workers=1) as client:
            assert client.cluster.scheduler.http_server.port != 8787
            assert dask.config.get("distributed.admin.large-graph-warning-threshold") == batch.LARGE_GRAPH_WARNING
    finally:
        taken.close()
    assert dask.config.get("distributed.admin.large-graph-warning-threshold") != batch.LARGE_GRAPH_WARNING
    assert not [w for w in recwarn if "8787" in str(w.message)]


def test_workers_that_join_after_the_run_started_are_used(tmp_path):
    """A run on a scheduler with no worker yet (the usual order on an HPC cluster: the worker jobs start after the
    client) computed one plane at a time for ever, even once several workers had joined."""
    import dask.array as da
    from distributed import Client, LocalCluster

    from napari_linblur.io.omezarr import write_ome_zarr

    log = tmp_path / "spans"
    log.mkdir()

    def slow(block):  # each task's start and end, in a file (the task runs on a copy of this function)
        start = time.monotonic()
        time.sleep(0.4)
        (log / f"{start}").write_text(f"{start} {time.monotonic()}")
        return block + 1

    lazy = da.zeros((10, 16, 16), chunks=(1, 16, 16), dtype=np.float32).map_blocks(
        slow, dtype=np.float32, meta=np.empty((0, 0, 0), np.float32))
    with (LocalCluster(n_workers=0, threads_per_worker=1, processes=False, dashboard_address=":0",
                       scheduler_kwargs={"dashboard": False}) as cluster, Client(cluster)):
        joiner = threading.Timer(1.0, lambda: cluster.scale(2))
        joiner.start()
        out = write_ome_zarr(tmp_path / "late.zarr", lazy, axes="zyx")
        joiner.join()
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"), mode="r")[:], np.ones((10, 16, 16), np.float32))
    spans = [tuple(map(float, f.read_text().split())) for f in log.iterdir()]
    overlapping = sum(a0 < b1 and b0 < a1 for i, (a0, a1) in enumerate(spans) for b0, b1 in spans[i + 1:])
    assert len(spans) == 10 and overlapping > 0, spans


def test_workers_dying_on_a_task_is_one_line_naming_the_input(tmp_path, monkeypatch, capsys):
    """distributed's KilledWorker (a worker killed by its memory limit, again and again) was a 29-line traceback
    naming only an internal task key, exit code 1. The error is real: a worker process that dies on its task."""
    import os

    import dask
    from distributed import Client, LocalCluster
    from distributed.scheduler import KilledWorker

    from napari_linblur.cli import apply_defocus
    from napari_linblur.cli.main import main

    with (dask.config.set({"distributed.scheduler.allowed-failures": 0}),
          LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                       scheduler_kwargs={"dashboard": False}) as cluster, Client(cluster) as client):
        with pytest.raises(KilledWorker) as died:
            client.submit(os._exit, 1).result(timeout=60)

    def run_focus(args):
        raise died.value

    monkeypatch.setattr(apply_defocus, "run_focus", run_focus)
    assert main(["focus", str(tmp_path / "plate.zarr")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"linblur focus: error: dask workers died while computing {tmp_path / 'plate.zarr'}")
    assert "--memory-limit" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
