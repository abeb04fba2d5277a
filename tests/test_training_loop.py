"""The shared training loop: learns, logs, checkpoints, resumes exactly, stops on cancel."""

import json
import os

import numpy as np
import pytest
import torch

from napari_linblur.models import registry
from napari_linblur.training.loop import TrainConfig, train


class ToyNet(torch.nn.Module):
    def __init__(self, width: int = 4, in_channels: int = 1):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(in_channels, width, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.Conv2d(width, 1, 3, padding=1))

    def forward(self, x):
        return self.net(x)


class ToyTask:
    """Learn a fixed 3x3 blur; batches depend only on (seed, step)."""

    name = "toy"

    def __init__(self, seed=0):
        self.seed = seed

    def build_model(self):
        return ToyNet()

    def batch(self, step, *, rank=0, world=1):
        rng = np.random.default_rng([self.seed, step, rank])
        x = torch.from_numpy(rng.random((4, 1, 16, 16), dtype=np.float32))
        y = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
        return x, y

    def loss(self, model, batch):
        x, y = batch
        loss = torch.nn.functional.l1_loss(model(x), y)
        return loss, {}

    def validate(self, model):
        x, y = self.batch(10**6)
        return {"val_loss": float(torch.nn.functional.l1_loss(model(x), y))}

    def card(self):
        return {"architecture": "ToyNet", "task": "toy", "config": {"width": 4}}


@pytest.fixture(autouse=True)
def _register(monkeypatch):
    monkeypatch.setitem(registry.ARCHITECTURES, "ToyNet", f"{__name__}:ToyNet")


def _cfg(out, **kw):
    base = dict(out=str(out), steps=30, lr=3e-3, seed=3, device="cpu", ckpt_every=10, val_every=10,
                log_every=5, progress=False, warmup=5)
    base.update(kw)
    return TrainConfig(**base)


def test_train_learns_and_writes_artifacts(tmp_path):
    res = train(ToyTask(), _cfg(tmp_path / "run"))
    assert res.finished and res.steps_done == 30
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["val_loss"] < log[0]["loss"]
    assert (tmp_path / "run" / "log.csv").exists()
    m = registry.load_model(res.model_path, device="cpu")
    assert m.card["training"]["seed"] == 3 and m.card["training"]["steps"] == 30
    hw = m.card["training"]["hardware"]  # bf16 kernels differ between CPU families: the card says which one
    assert hw["cpu"] and hw["cpu_capability"] and hw["threads"] >= 1 and "gpu" not in hw


def test_resume_after_stop_is_exact(tmp_path):
    full = train(ToyTask(), _cfg(tmp_path / "full"))
    calls = {"n": 0}

    def stop_after_15():
        calls["n"] += 1
        return calls["n"] > 15

    part = train(ToyTask(), _cfg(tmp_path / "part", ckpt_every=5), should_stop=stop_after_15)
    assert not part.finished and part.steps_done == 15
    with pytest.raises(FileExistsError):
        train(ToyTask(), _cfg(tmp_path / "part"))
    resumed = train(ToyTask(), _cfg(tmp_path / "part", ckpt_every=5, resume=True))
    assert resumed.finished and resumed.steps_done == 30
    a = registry.load_model(full.model_path, device="cpu").state_dict()
    b = registry.load_model(resumed.model_path, device="cpu").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    steps = [json.loads(x)["step"] for x in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))


class StepHookTask(ToyTask):
    """Calls ``hook()`` while drawing the batch of step ``at``: a signal from outside (Ctrl-C, a cluster's
    SIGTERM) or a crash (an out-of-memory kill: no cleanup, no checkpoint)."""

    def __init__(self, at, hook):
        super().__init__()
        self.at, self.hook = at, hook

    def batch(self, step, *, rank=0, world=1):
        if step == self.at:
            self.hook()
        return super().batch(step, rank=rank, world=world)


def _assert_same_weights(path_a, path_b):
    a = registry.load_model(path_a, device="cpu").state_dict()
    b = registry.load_model(path_b, device="cpu").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_saves_the_step_reached_and_resume_is_exact(tmp_path, signame):
    """A signal stops the run at the next step boundary with a checkpoint of that step (not the last periodic one),
    raises a KeyboardInterrupt that says how to continue, restores the handlers, and --resume ends where an
    uninterrupted run ends."""
    import signal

    from napari_linblur.training.loop import TrainingInterrupted

    signum = getattr(signal, signame)
    before = signal.getsignal(signum)
    full = train(ToyTask(), _cfg(tmp_path / "full"))
    with pytest.raises(TrainingInterrupted, match=rf"{signame} at step 13 of 30.*--resume") as info:
        train(StepHookTask(12, lambda: os.kill(os.getpid(), signum)), _cfg(tmp_path / "part"))  # checkpoints: 10, 20
    assert isinstance(info.value, KeyboardInterrupt) and info.value.signal_name == signame
    assert info.value.result.steps_done == 13 and not info.value.result.finished
    assert signal.getsignal(signum) is before
    saved = registry.load_model(tmp_path / "part" / "model.safetensors", device="cpu")
    card = saved.card
    assert card["training"]["steps"] == 13 and card["training"]["finished"] is False
    # its validation is that of the step-13 weights it saved, not the step-10 validation
    assert card["validation"] == pytest.approx(ToyTask().validate(saved.eval()), rel=1e-6)
    assert info.value.result.metrics == card["validation"]
    resumed = train(ToyTask(), _cfg(tmp_path / "part", resume=True))
    assert resumed.finished and resumed.steps_done == 30
    _assert_same_weights(full.model_path, resumed.model_path)


def test_a_run_dead_before_its_first_checkpoint_can_be_resumed(tmp_path):
    """The folder of a run that died before its first periodic checkpoint is not a dead end ('already holds a
    run', yet 'no checkpoint'): it holds the step-0 checkpoint, and --resume gives the uninterrupted result."""
    full = train(ToyTask(), _cfg(tmp_path / "full"))
    def crash():
        raise MemoryError("killed")

    with pytest.raises(MemoryError):
        train(StepHookTask(7, crash), _cfg(tmp_path / "part"))  # the first periodic checkpoint would be step 10
    with pytest.raises(FileExistsError, match="--resume"):
        train(ToyTask(), _cfg(tmp_path / "part"))
    resumed = train(ToyTask(), _cfg(tmp_path / "part", resume=True))
    assert resumed.finished and resumed.steps_done == 30
    _assert_same_weights(full.model_path, resumed.model_path)
    # a run cannot be "resumed" to fewer steps than it has done (its card would say finished at 30 of 20)
    with pytest.raises(ValueError, match="at step 30 already.*--steps >= 30"):
        train(ToyTask(), _cfg(tmp_path / "part", resume=True, steps=20))


def test_a_run_stopped_before_its_first_step_saves_no_model(tmp_path):
    """A Cancel (or Ctrl-C) before any step: the step-0 checkpoint is kept for --resume, but no model.safetensors —
    its untrained starting weights were saved and offered as "the weights so far"."""
    full = train(ToyTask(), _cfg(tmp_path / "full"))
    run = tmp_path / "part"
    part = train(ToyTask(), _cfg(run), should_stop=lambda: True)
    assert not part.finished and part.steps_done == 0
    assert not (run / "model.safetensors").exists() and (run / "checkpoint.safetensors").exists()
    resumed = train(ToyTask(), _cfg(run, resume=True))
    assert resumed.finished and resumed.steps_done == 30
    _assert_same_weights(full.model_path, resumed.model_path)


def test_a_budget_spent_before_the_first_step_saves_no_model(tmp_path):
    """A --max-minutes budget that ended before step 1 saved the untrained starting weights as the run's model; now it
    keeps only the step-0 checkpoint, says so, and the CLI's closing line names no model file."""
    from napari_linblur.cli._groups import saved_model

    run = tmp_path / "budget"
    with pytest.warns(UserWarning, match="budget ended before the first step: no model was saved"):
        part = train(ToyTask(), _cfg(run, max_minutes=1e-12))
    assert not part.finished and part.steps_done == 0
    assert not (run / "model.safetensors").exists() and (run / "checkpoint.safetensors").exists()
    assert saved_model(part).startswith("none saved")
    resumed = train(ToyTask(), _cfg(run, resume=True))
    assert resumed.finished and saved_model(resumed) == str(run / "model.safetensors")


@pytest.mark.parametrize(("change", "match"), [({"lr": float("nan")}, "lr"), ({"lr": float("inf")}, "lr"),
                                               ({"seed": -1}, "seed")])
def test_non_finite_rates_and_negative_seeds_are_refused_before_any_file(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        train(ToyTask(), _cfg(tmp_path / "bad", **change))
    assert not (tmp_path / "bad").exists()


def test_ema_weights_are_the_average_saved_and_resumed_exactly(tmp_path):
    from safetensors import safe_open

    from napari_linblur.training.loop import ema_decay

    plain = train(ToyTask(), _cfg(tmp_path / "plain"))
    full = train(ToyTask(), _cfg(tmp_path / "ema", ema=0.9))
    card = registry.load_model(full.model_path, device="cpu").card
    assert card["training"]["ema"] == 0.9
    saved = registry.load_model(full.model_path, device="cpu").state_dict()
    with safe_open(str(tmp_path / "ema" / "checkpoint.safetensors"), framework="pt") as f:
        raw = {k[6:]: f.get_tensor(k) for k in f.keys() if k.startswith("model.")}
        avg = {k[4:]: f.get_tensor(k) for k in f.keys() if k.startswith("ema.")}
    # the saved model is the average, not the last weights; the last weights are those of the plain run
    raw_plain = registry.load_model(plain.model_path, device="cpu").state_dict()
    for k in saved:
        torch.testing.assert_close(saved[k], avg[k], rtol=0, atol=0)
        torch.testing.assert_close(raw[k], raw_plain[k], rtol=0, atol=1e-6)
    assert any(not torch.allclose(saved[k], raw[k]) for k in saved)
    # the decay law: a short warm-up, then the configured decay
    assert ema_decay(0.9, 0) == pytest.approx(0.1) and ema_decay(0.9, 100) == 0.9
    # stop at 15 and resume: the same averaged model
    calls = {"n": 0}

    def stop_after_15():
        calls["n"] += 1
        return calls["n"] > 15

    part = train(ToyTask(), _cfg(tmp_path / "part", ema=0.9, ckpt_every=5), should_stop=stop_after_15)
    assert not part.finished
    resumed = train(ToyTask(), _cfg(tmp_path / "part", ema=0.9, ckpt_every=5, resume=True))
    b = registry.load_model(resumed.model_path, device="cpu").state_dict()
    for k in saved:
        torch.testing.assert_close(saved[k], b[k], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="ema"):
        train(ToyTask(), _cfg(tmp_path / "bad", ema=1.0))


class LayoutTask(ToyTask):
    """ToyTask with a second (constant) input channel that records whether each training batch reached the model
    in channels-last layout (with one channel the two layouts are the same strides)."""

    def __init__(self, seed=0):
        super().__init__(seed)
        self.layouts = []

    def build_model(self):
        return ToyNet(in_channels=2)

    def batch(self, step, *, rank=0, world=1):
        x, y = super().batch(step, rank=rank, world=world)
        return torch.cat([x, torch.ones_like(x)], dim=1), y

    def validate(self, model):
        x, y = self.batch(10**6)
        return {"val_loss": float(torch.nn.functional.l1_loss(model(x), y))}

    def loss(self, model, batch):
        x, _ = batch
        self.layouts.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return super().loss(model, batch)

    def card(self):
        return {"architecture": "ToyNet", "task": "toy", "config": {"width": 4, "in_channels": 2}}


def test_channels_last_is_a_layout_not_a_different_model(tmp_path):
    plain_task, cl_task = LayoutTask(), LayoutTask()
    plain = train(plain_task, _cfg(tmp_path / "plain"))
    cl = train(cl_task, _cfg(tmp_path / "cl", channels_last=True))
    assert not any(plain_task.layouts) and all(cl_task.layouts) and len(cl_task.layouts) == 30
    m = registry.load_model(cl.model_path, device="cpu")
    assert m.card["training"]["channels_last"] is True
    assert registry.load_model(plain.model_path, device="cpu").card["training"]["channels_last"] is False
    # the same training up to float rounding of the convolution kernels
    a, b = registry.load_model(plain.model_path, device="cpu").state_dict(), m.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)
    # stopped and resumed in channels-last: the same as uninterrupted
    calls = {"n": 0}

    def stop_after_15():
        calls["n"] += 1
        return calls["n"] > 15

    train(LayoutTask(), _cfg(tmp_path / "part", channels_last=True, ckpt_every=5), should_stop=stop_after_15)
    resumed = train(LayoutTask(), _cfg(tmp_path / "part", channels_last=True, ckpt_every=5, resume=True))
    c = registry.load_model(resumed.model_path, device="cpu").state_dict()
    for k in b:
        torch.testing.assert_close(b[k], c[k], rtol=0, atol=1e-6)


def test_bad_config_and_missing_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="steps"):
        train(ToyTask(), _cfg(tmp_path / "a", steps=0))
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        train(ToyTask(), _cfg(tmp_path / "b", resume=True))


_DDP_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from napari_linblur.models import registry
from napari_linblur.training.loop import TrainConfig, train
from test_training_loop import ToyTask
registry.ARCHITECTURES["ToyNet"] = "test_training_loop:ToyNet"
res = train(ToyTask(), TrainConfig(out=sys.argv[1], steps=20, lr=3e-3, seed=3, device="cpu", ckpt_every=10,
                                   val_every=10, log_every=5, progress=False, warmup=5))
import json, pathlib, torch.distributed as dist
rank = dist.get_rank()
pathlib.Path(sys.argv[1], f"rank{{rank}}.json").write_text(json.dumps([rank, res.steps_done, res.finished]))
"""


def test_ddp_with_torchrun_on_cpu(tmp_path):
    """Two CPU processes under torchrun (gloo): both ranks finish, rank 0 writes the model."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "ddp_toy.py"
    script.write_text(_DDP_SCRIPT.format(tests=str(Path(__file__).parent)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", str(script), str(tmp_path / "run")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = [json.loads((tmp_path / "run" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks == [[0, 20, True], [1, 20, True]]
    m = registry.load_model(tmp_path / "run" / "model.safetensors", device="cpu")
    assert m.card["training"]["steps"] == 20


@pytest.mark.parametrize("bad", [{"max_minutes": 0}, {"max_minutes": -1.0}, {"threads": 0}])
def test_a_budget_that_allows_no_step_is_refused(tmp_path, bad):
    """--max-minutes 0 would save an untrained model as if trained: refused before anything is written."""
    with pytest.raises(ValueError, match=next(iter(bad))):
        train(ToyTask(), _cfg(tmp_path / "run", **bad))
    assert not (tmp_path / "run").exists()


def test_resume_keeps_the_run_it_continues(tmp_path):
    """--resume refuses changed options and damaged checkpoints (naming the file), a fresh run never replaces a
    checkpoint, each session gets its own --max-minutes budget, and outputs are readable like any new file."""
    stop = {"n": 0}

    def after_5():
        stop["n"] += 1
        return stop["n"] > 5

    part = train(ToyTask(), _cfg(tmp_path / "r", ckpt_every=5), should_stop=after_5)
    assert part.steps_done == 5
    (tmp_path / "r" / "log.jsonl").unlink()  # as after a kill before the first log line
    with pytest.raises(FileExistsError, match="already holds a training run"):
        train(ToyTask(), _cfg(tmp_path / "r"))
    for change in ({"seed": 4}, {"lr": 0.5}, {"amp": "bf16"}):
        with pytest.raises(ValueError, match=f"{next(iter(change))} .* -> "):
            train(ToyTask(), _cfg(tmp_path / "r", resume=True, **change))
    # a budget that allows a few milliseconds still advances the run on every resume
    budget = dict(resume=True, max_minutes=1e-4, ckpt_every=1)
    done = [train(ToyTask(), _cfg(tmp_path / "r", **budget)).steps_done for _ in range(2)]
    assert 5 < done[0] < done[1]
    mask = os.umask(0)
    os.umask(mask)
    for name in ("checkpoint.safetensors", "model.safetensors", "model.json"):
        assert (tmp_path / "r" / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
    ckpt = tmp_path / "r" / "checkpoint.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(ValueError, match="checkpoint.safetensors cannot be restored"):
        train(ToyTask(), _cfg(tmp_path / "r", resume=True))


def test_impossible_precision_is_refused_before_any_file(tmp_path):
    with pytest.raises(ValueError, match="fp16"):
        train(ToyTask(), _cfg(tmp_path / "fp16", amp="fp16", device="cpu"))
    assert not (tmp_path / "fp16").exists()


def test_logs_of_a_resumed_run_equal_the_uninterrupted_ones(tmp_path):
    """A checkpoint between two log lines keeps the partial sums: the resumed run logs the same averages."""
    full = train(ToyTask(), _cfg(tmp_path / "full", ckpt_every=3))
    stop = {"n": 0}

    def after_7():
        stop["n"] += 1
        return stop["n"] > 7

    train(ToyTask(), _cfg(tmp_path / "part", ckpt_every=3), should_stop=after_7)  # last checkpoint: step 6
    train(ToyTask(), _cfg(tmp_path / "part", ckpt_every=3, resume=True))

    def losses(run):
        rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows}

    a, b = losses(full.model_path.parent), losses(tmp_path / "part")
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-6 for k in a)


def test_a_log_line_cut_short_does_not_block_the_resume(tmp_path):
    """A run killed while appending to ``log.jsonl`` (or a full disk) leaves a cut last line: the resume used to end
    in a bare JSONDecodeError naming no file. The line is left out with a warning naming the file and line."""
    stop = {"n": 0}

    def after_7():
        stop["n"] += 1
        return stop["n"] > 7

    run = tmp_path / "part"
    train(ToyTask(), _cfg(run, ckpt_every=3), should_stop=after_7)
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 9, "lo')
    with pytest.warns(UserWarning, match=r"log.jsonl: line \d+ is not a log record"):
        train(ToyTask(), _cfg(run, ckpt_every=3, resume=True))
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == _cfg(run).steps


class RecipeTask(ToyTask):
    """ToyTask whose data and loss have options, recorded in its card like the real tasks' recipes."""

    def __init__(self, seed=0, *, batch_size=4, crop=16, reg="l1", path="data.zarr"):
        super().__init__(seed)
        self.batch_size, self.crop, self.reg, self.path = batch_size, crop, reg, path

    def batch(self, step, *, rank=0, world=1):
        rng = np.random.default_rng([self.seed, step, rank])
        x = torch.from_numpy(rng.random((self.batch_size, 1, self.crop, self.crop), dtype=np.float32))
        return x, torch.nn.functional.avg_pool2d(x, 3, 1, 1)

    def loss(self, model, batch):
        x, y = batch
        fn = torch.nn.functional.l1_loss if self.reg == "l1" else torch.nn.functional.mse_loss
        return fn(model(x), y), {}

    def card(self):
        return {**super().card(), "regularization": {"reg": self.reg},
                "data": {"path": self.path, "crop": self.crop, "batch_size": self.batch_size,
                         "split": {"train": [0, 1, 2], "val": [3]}, "gain": float("nan")}}


def _stop_after(n):
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > n

    return stop


def _drop_recorded_card(ckpt):
    """Rewrite a checkpoint as a version before the task's card was recorded in it."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(ckpt), framework="pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k not in ("card", "commands")}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(ckpt), metadata=meta)


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_a_run_stopped_between_validations_records_the_validation_of_its_saved_weights(tmp_path, ema):
    """A run stopped (should_stop, as the GUI's cancel, a signal or --max-minutes) after a periodic validation: the
    card's validation and the result's metrics are those of the weights it saved at the step it reached, not of
    the last periodic validation; a resumed session that stops between validations too does the same."""
    run = tmp_path / "r"

    def check(res, steps):
        model = registry.load_model(res.model_path, device="cpu").eval()
        card = model.card
        assert res.steps_done == card["training"]["steps"] == steps and not res.finished
        with torch.no_grad():
            assert card["validation"] == pytest.approx(ToyTask().validate(model), rel=1e-6)
        assert res.metrics == card["validation"]
        logged = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
        periodic = [r["val_loss"] for r in logged if "val_loss" in r]
        assert periodic and card["validation"]["val_loss"] != pytest.approx(periodic[-1], rel=1e-6)

    # validations at steps 10, 20, 30; stopped at 15
    check(train(ToyTask(), _cfg(run, ema=ema), should_stop=_stop_after(15)), 15)
    # resumed, validated at 20, stopped at 22
    check(train(ToyTask(), _cfg(run, ema=ema, resume=True), should_stop=_stop_after(7)), 22)
    # a run that ends at its last step keeps the validation of that step (measured once, logged)
    done = train(ToyTask(), _cfg(run, ema=ema, resume=True))
    assert done.finished and done.metrics["val_loss"] == json.loads(
        (run / "log.jsonl").read_text().splitlines()[-1])["val_loss"]


def test_resume_refuses_changed_task_options_and_names_them(tmp_path):
    """The task's own options (its card: crop, batch size, regularization, data, ...) are part of the run: a
    --resume with other ones is refused, naming each with its old and new value, and leaves the run as it was."""
    run = tmp_path / "r"
    part = train(RecipeTask(batch_size=2, crop=16), _cfg(run, ckpt_every=5), should_stop=_stop_after(5))
    assert part.steps_done == 5
    before = {p: (run / p).read_bytes() for p in ("checkpoint.safetensors", "train_config.json", "model.json")}
    for task, named in [
        (RecipeTask(batch_size=4, crop=16), ["data.batch_size 2 -> 4"]),
        (RecipeTask(batch_size=2, crop=24, reg="l2"), ["data.crop 16 -> 24", "regularization.reg 'l1' -> 'l2'"]),
        (RecipeTask(batch_size=2, crop=16, path="other.zarr"), ["data.path 'data.zarr' -> 'other.zarr'"]),
    ]:
        with pytest.raises(ValueError, match="start a\\s+new --out") as err:
            train(task, _cfg(run, ckpt_every=5, resume=True, steps=40))
        for text in named:
            assert text in str(err.value)
        assert "gain" not in str(err.value)  # NaN in both cards is no change
    # run options and task options are named together
    with pytest.raises(ValueError, match="seed 3 -> 4; data.crop 16 -> 24"):
        train(RecipeTask(batch_size=2, crop=24), _cfg(run, resume=True, seed=4))
    assert {p: (run / p).read_bytes() for p in before} == before  # nothing was touched
    # the original task options resume, and may change what a session may change (steps, budget, threads, cadence)
    res = train(RecipeTask(batch_size=2, crop=16), _cfg(run, ckpt_every=7, resume=True, steps=40, threads=1,
                                                         command="second session"))
    assert res.finished and res.steps_done == 40


def test_resume_with_unchanged_task_options_is_exact_and_records_every_session(tmp_path):
    full = train(RecipeTask(batch_size=2, crop=16, reg="l2"), _cfg(tmp_path / "full", command="linblur train x"))
    train(RecipeTask(batch_size=2, crop=16, reg="l2"), _cfg(tmp_path / "part", ckpt_every=5, command="first"),
          should_stop=_stop_after(12))
    resumed = train(RecipeTask(batch_size=2, crop=16, reg="l2"),
                    _cfg(tmp_path / "part", ckpt_every=5, resume=True, command="second"))
    assert resumed.finished and resumed.steps_done == 30
    a = registry.load_model(full.model_path, device="cpu")
    b = registry.load_model(resumed.model_path, device="cpu")
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k], rtol=0, atol=0)
    assert b.card["data"]["batch_size"] == 2 and b.card["regularization"] == a.card["regularization"] == {"reg": "l2"}
    # the card and train_config.json keep the command of every session, not only the last one
    assert b.card["training"]["command"] == "second" and b.card["training"]["sessions"] == ["first", "second"]
    assert "sessions" not in a.card["training"]
    cfg = json.loads((tmp_path / "part" / "train_config.json").read_text())
    assert cfg["sessions"] == ["first", "second"] and cfg["card"]["data"]["crop"] == 16


def test_resume_of_a_checkpoint_without_a_recorded_card(tmp_path):
    """Checkpoints of older versions lack the task's card: train_config.json stands in for it, and where neither
    records the options (or an entry of the card) the resume is not refused for them."""
    run = tmp_path / "r"
    train(RecipeTask(batch_size=2), _cfg(run, ckpt_every=5, command="old"), should_stop=_stop_after(5))
    _drop_recorded_card(run / "checkpoint.safetensors")
    with pytest.raises(ValueError, match="data.batch_size 2 -> 4"):
        train(RecipeTask(batch_size=4), _cfg(run, resume=True))
    # an entry the recorded card lacks is not compared
    config = json.loads((run / "train_config.json").read_text())
    del config["card"]["regularization"]
    (run / "train_config.json").write_text(json.dumps(config))
    res = train(RecipeTask(batch_size=2, reg="l2"), _cfg(run, ckpt_every=5, resume=True, steps=10, command="new"))
    assert res.steps_done == 10
    assert registry.load_model(res.model_path, device="cpu").card["training"]["sessions"] == ["old", "new"]
    # no card anywhere: nothing to compare, the run options are still checked
    _drop_recorded_card(run / "checkpoint.safetensors")
    (run / "train_config.json").unlink()
    assert train(RecipeTask(batch_size=4), _cfg(run, resume=True, steps=15)).steps_done == 15
    with pytest.raises(ValueError, match="lr 0.003 -> 0.1"):
        train(RecipeTask(batch_size=4), _cfg(run, resume=True, steps=20, lr=0.1))


AE_TINY = {"arch": "resnet", "channels": [8, 16], "latent_channels": 4, "norm": "none", "output": "linear"}


@pytest.fixture(scope="module")
def ae_data(tmp_path_factory):
    from napari_linblur.synth.dataset import write_synthetic_dataset
    from napari_linblur.synth.recipes import get_recipe

    path = tmp_path_factory.mktemp("ae") / "d.zarr"
    write_synthetic_dataset(path, get_recipe("bbbc006-like", shape=(48, 64), keep_even=True), fields=5, seed=3,
                            progress=False)
    return path


def _tiny_command(what, tmp_path, request):
    """The arguments of a tiny ``linblur train ae`` or ``linblur train deblur`` run (no --out, --steps)."""
    common = ["--no-progress", "--device", "cpu", "--threads", "1", "--ckpt-every", "2", "--val-every", "2"]
    if what == "ae":
        return ["train", "ae", "--data", str(request.getfixturevalue("ae_data")), "--model-config",
                json.dumps(AE_TINY), "--batch-size", "2", "--crop", "32", *common]
    return ["train", "deblur", "--config", "tiny", "--patch", "16", "--batch", "2", "--pool", "1", *common]


@pytest.mark.parametrize("what", ["ae", "deblur"])
def test_resume_needs_no_init_file_and_keeps_the_recorded_init(tmp_path, request, what):
    """`linblur train ... --init X --resume` continues from the checkpoint, which holds every weight: X may be gone
    (the run ends as an uninterrupted one); another --init than the run started from is not read (a warning says
    so) and the card keeps the init recorded when the run started."""
    import shutil

    from napari_linblur.cli.main import main

    cmd = _tiny_command(what, tmp_path, request)
    assert main([*cmd, "--steps", "1", "--out", str(tmp_path / "src")]) == 0
    init = tmp_path / "init.safetensors"
    shutil.copy(tmp_path / "src" / "model.safetensors", init)
    assert main([*cmd, "--init", str(init), "--steps", "4", "--out", str(tmp_path / "full")]) == 0
    assert main([*cmd, "--init", str(init), "--steps", "2", "--out", str(tmp_path / "part")]) == 0
    init.unlink()
    assert main([*cmd, "--init", str(init), "--steps", "4", "--out", str(tmp_path / "part"), "--resume"]) == 0
    _assert_same_weights(tmp_path / "full" / "model.safetensors", tmp_path / "part" / "model.safetensors")
    card = registry.read_card(tmp_path / "part" / "model.safetensors")
    # the card names the starting weights by content: the sha256 of the init file, read when the run started
    assert card["init"] == registry.read_card(tmp_path / "full" / "model.safetensors")["init"]
    assert card["init"]["from"] == str(init) and card["training"]["steps"] == 4
    assert card["init"]["sha256"] == registry.sha256_file(tmp_path / "src" / "model.safetensors")
    other = tmp_path / "other.safetensors"
    assert main([*cmd, "--steps", "1", "--seed", "9", "--out", str(tmp_path / "o")]) == 0
    shutil.copy(tmp_path / "o" / "model.safetensors", other)
    with pytest.warns(UserWarning, match=f"--init {other} \\(sha256 [0-9a-f]{{64}}\\) is not the model this run "
                      "started from"):
        assert main([*cmd, "--init", str(other), "--steps", "6", "--out", str(tmp_path / "part"), "--resume"]) == 0
    card = registry.read_card(tmp_path / "part" / "model.safetensors")
    assert card["init"]["from"] == str(init) and card["training"]["steps"] == 6
    # the same weights under another name are the same init: read nothing, warn nothing
    shutil.copy(tmp_path / "src" / "model.safetensors", init)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main([*cmd, "--init", str(init), "--steps", "7", "--out", str(tmp_path / "part"), "--resume"]) == 0


@pytest.mark.parametrize("what", ["ae", "deblur"])
@pytest.mark.parametrize("rank", [0, 1])
def test_under_torchrun_only_rank_0_prints_the_summary(tmp_path, request, monkeypatch, capsys, what, rank):
    """Every rank of a torchrun launch runs the command: only rank 0 prints the summary."""
    from napari_linblur.cli.main import main
    from napari_linblur.training import loop

    def fake_train(task, cfg, **kw):
        return loop.TrainResult(tmp_path / "model.safetensors", cfg.steps, True, {"val_loss": 0.5}, 1.0)

    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(loop, "train", fake_train)
    assert main([*_tiny_command(what, tmp_path, request), "--steps", "2", "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert ("2 steps" in printed) if rank == 0 else (printed == "")


def _toy_grads_step(scaler, grad_clip, loss_factor=1.0):
    """One optimizer_step of a fresh ToyNet (seed 0) on a fixed batch; returns (stepped, weights after)."""
    from napari_linblur.training.loop import optimizer_step

    torch.manual_seed(0)
    net = ToyNet()
    params = list(net.parameters())
    opt = torch.optim.AdamW(params, lr=1e-2)
    x, y = ToyTask().batch(0)
    loss = torch.nn.functional.l1_loss(net(x), y) * loss_factor
    stepped = optimizer_step(loss, opt, params, scaler, grad_clip)
    return stepped, [p.detach().clone() for p in params]


@pytest.mark.parametrize("grad_clip", [None, 1e-3])
def test_a_loss_scaled_step_updates_as_the_unscaled_one_and_clips_unscaled_gradients(grad_clip):
    # fp16 training scales the loss (torch.amp.GradScaler, CUDA only in the loop); the CPU scaler runs the same code
    off = torch.amp.GradScaler("cpu", enabled=False)
    on = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    stepped_off, w_off = _toy_grads_step(off, grad_clip)
    stepped_on, w_on = _toy_grads_step(on, grad_clip)
    assert stepped_off and stepped_on
    torch.manual_seed(0)
    w0 = [p.detach() for p in ToyNet().parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(w_on, w0))  # it stepped
    for a, b in zip(w_on, w_off):  # clipping saw the unscaled gradients (a clip of the scaled ones would differ)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_an_overflowing_scaled_step_is_skipped_and_lowers_the_scale():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    stepped, w = _toy_grads_step(scaler, None, loss_factor=float("inf"))
    torch.manual_seed(0)
    w0 = [p.detach() for p in ToyNet().parameters()]
    assert not stepped
    assert all(torch.equal(a, b) for a, b in zip(w, w0))  # weights untouched
    assert scaler.get_scale() == 2.0**11


def test_the_loss_scale_is_checkpointed_and_restored(tmp_path):
    from napari_linblur.training.loop import _load_checkpoint, _save_checkpoint, grad_scaler

    assert not grad_scaler(torch.device("cpu"), "bf16").is_enabled()  # bf16 keeps fp32's range: no scaling
    net = ToyNet()
    opt = torch.optim.AdamW(net.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    _toy_grads_step(scaler, None, loss_factor=float("inf"))  # an overflow halves the scale: 2**7
    cfg = _cfg(tmp_path)
    _save_checkpoint(tmp_path / "ckpt.safetensors", net, opt, 5, 1.0, cfg, scaler=scaler)
    restored = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    _load_checkpoint(tmp_path / "ckpt.safetensors", ToyNet(), torch.optim.AdamW(ToyNet().parameters()), cfg=cfg,
                     scaler=restored)
    assert restored.get_scale() == 2.0**7
