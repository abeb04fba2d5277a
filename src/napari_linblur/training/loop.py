"""The one training loop shared by every model (autoencoder, defocus-map network, deblurring network).

What it gives every task: deterministic seeds; batches that are a pure function of ``(seed, step)`` so that
``resume`` continues exactly where a killed run stopped; checkpoints in safetensors (model, optimizer, RNG —
no pickles) written atomically every ``ckpt_every`` steps and at the end; validation; a progress bar; a JSON-lines
and CSV log; ``device`` selection; bf16/fp16 autocast; a wall-clock budget; a cancel hook for the GUI; and
multi-GPU data parallelism when launched with ``torchrun`` (DDP: each rank draws its own shard of every batch).

A *task* supplies the model and the data::

    class Task(Protocol):
        name: str                                   # "ae", "defocus", "deblur"
        def build_model(self) -> torch.nn.Module
        def batch(self, step: int, *, rank: int = 0, world: int = 1): ...   # deterministic in (seed, step)
        def loss(self, model, batch) -> tuple[torch.Tensor, dict[str, float]]
        def validate(self, model) -> dict[str, float]                      # must contain "val_loss"
        def card(self) -> dict                      # architecture, task, config, data recipe, ...

and optionally ``finalize(model, validation) -> (validation, card_entries)``: a last pass over the trained model
before it is saved (the defocus task re-estimates its BatchNorm statistics there). It is skipped when the run was
cancelled through ``should_stop``.

The card a task gives at the start of a run is its recipe (data, configuration, regularization, ...): every checkpoint
records it, and a ``resume`` refuses a task whose card differs from the checkpoint's, like changed run options
(:data:`RESUME_FIXED`), so the run and its model card keep one recipe. Card entries that are measurements rather
than options may be listed, as dotted keys, in an optional ``resume_ignore`` attribute of the task.

A ``resume`` restores every weight from the checkpoint, so the weights a run started from (a task's ``init``) are
not needed again: before it builds the model, the loop gives the card recorded with the checkpoint to the task's
optional ``resume_from(card)``, and a task that starts from other weights (:class:`StartsFromInit`) skips reading
them and keeps the ``init`` that card records (the file may have been moved, deleted or replaced since;
:func:`warn_init_not_read`).

Only rank 0 of a ``torchrun`` launch writes the run's files; :func:`is_main_process` tells a command whether it is
the process that prints progress and summaries.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from napari_linblur.io.atomic import atomic_target, make_output_folder

CHECKPOINT = "checkpoint.safetensors"
MODEL = "model.safetensors"
#: the files a run writes into its ``--out`` folder
RUN_FILES = (MODEL, "model.json", CHECKPOINT, "log.jsonl", "log.csv")


class Task(Protocol):  # pragma: no cover - structural type
    name: str

    def build_model(self): ...

    def batch(self, step: int, *, rank: int = 0, world: int = 1): ...

    def loss(self, model, batch): ...

    def validate(self, model) -> dict[str, float]: ...

    def card(self) -> dict: ...


#: the warm-up of a run of at least ``10 * DEFAULT_WARMUP`` steps; shorter runs warm up over a tenth of their steps
DEFAULT_WARMUP = 50


def default_warmup(steps: int) -> int:
    """The learning-rate warm-up (steps) of a run of ``steps`` steps when none is given: ``DEFAULT_WARMUP``, or a
    tenth of a shorter run's steps (at least 1), so that a short run is not all warm-up.

    Examples
    --------
    >>> default_warmup(2000), default_warmup(500), default_warmup(300), default_warmup(3)
    (50, 50, 30, 1)
    """
    return min(DEFAULT_WARMUP, max(1, int(steps) // 10))


@dataclass
class TrainConfig:
    """Options of :func:`train` (the same for every model and every CLI ``linblur train`` sub-command)."""

    out: str
    steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"  # "cosine" (with warm-up) or "constant"
    warmup: int = DEFAULT_WARMUP
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    amp: str = "off"  # "off", "bf16", "fp16"
    ckpt_every: int = 200
    val_every: int = 200
    log_every: int = 10
    resume: bool = False
    max_minutes: float | None = None
    threads: int | None = None
    progress: bool = True
    #: exponential moving average of the weights (0 = off): validation, checkpoints' ``ema.*`` and the saved
    #: ``model.safetensors`` use the averaged weights; decay ``min(ema, (1 + t) / (10 + t))`` at step ``t``
    ema: float = 0.0
    #: keep the model's weights and every 4-D batch tensor in channels-last memory layout (NHWC): the same
    #: network and data, a different layout for the convolution kernels; measured 1.2-1.4x faster training steps
    #: for the defocus network in bf16 on CPU (docs/results/defocus.md)
    channels_last: bool = False
    command: str = field(default_factory=lambda: " ".join(shlex.quote(a) for a in sys.argv))
    #: the same command with every option spelled out, defaults included (``cli._groups.command_line``): a later
    #: change of a default cannot change what re-running it trains. ``--init NAME`` of a shipped model is
    #: completed by the card's ``init.sha256`` (the name may later point at other weights).
    command_effective: str | None = None

    def validate(self) -> None:
        if self.steps <= 0:
            raise ValueError(f"steps must be positive, got {self.steps}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed (--seed) must be an integer >= 0, got {self.seed!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, (int, np.integer)) or self.warmup < 0:
            raise ValueError(f"warmup (--warmup) must be an integer >= 0 (steps), got {self.warmup!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr (--lr) must be a positive finite number, got {self.lr}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        for name in ("ckpt_every", "val_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1) (0 = off; e.g. 0.999), got {self.ema}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes (--max-minutes) must be a positive budget in minutes, or None for no "
                             f"budget; got {self.max_minutes}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads (--threads) must be >= 1, got {self.threads}")
        if not str(os.fspath(self.out)).strip():  # Path("") is the current folder: the run's files would land there
            raise ValueError("out (--out) is empty: give the run's folder")


@dataclass
class TrainResult:
    model_path: Path
    steps_done: int
    finished: bool  # False when stopped early (budget or cancel); the checkpoint allows --resume
    metrics: dict[str, float]
    seconds: float


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped a run between two steps, after its checkpoint and model were saved.

    ``str()`` says at which step and how to continue; ``result`` is the :class:`TrainResult` of the saved state and
    ``signal_name`` the signal (``"SIGINT"`` or ``"SIGTERM"``).
    """

    def __init__(self, message: str, result: TrainResult, signal_name: str = "SIGINT"):
        super().__init__(message)
        self.result = result
        self.signal_name = signal_name


class _StopSignals:
    """While a run trains in the main thread, SIGINT and SIGTERM ask it to stop at the next step boundary (so its
    checkpoint is one an uninterrupted run also passes through); a second Ctrl-C interrupts at once."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.received: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        import signal
        import threading

        if not self.enabled or threading.current_thread() is not threading.main_thread():
            # a GUI worker thread stops through its should_stop hook; DDP ranks keep the default handlers, as
            # ranks stopping at different steps would wait for each other forever
            return self
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except (ValueError, OSError):  # pragma: no cover - platforms without the signal
                pass
        return self

    def _handle(self, signum, frame) -> None:
        import signal

        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, the last checkpoint stays
        self.received = signal.Signals(signum).name
        # a step can take a while (the first one renders the training pool): say what happens meanwhile
        # (os.write, not print: a handler may interrupt a write to stderr, such as the progress bar's)
        try:
            os.write(2, f"\n{self.received}: stopping after this step with a checkpoint (Ctrl-C again to stop at "
                        "once)\n".encode())
        except OSError:  # pragma: no cover - no stderr
            pass

    def __exit__(self, *exc) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up then cosine decay to 5 %, or constant."""
    if cfg.schedule == "constant":
        return cfg.lr
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - seeds third-party code using the legacy global RNG
    torch.manual_seed(seed)


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def is_main_process() -> bool:
    """Whether this process prints a run's progress and summary: True without ``torchrun``, and on rank 0 of a
    ``torchrun`` (DDP) launch, whose every rank runs the same command.

    Examples
    --------
    >>> import os
    >>> is_main_process() == (int(os.environ.get("RANK", "0")) == 0)
    True
    """
    return _dist_info()[0] == 0


def _save_checkpoint(path: Path, model, optimizer, step: int, elapsed: float, cfg: TrainConfig,
                     ema_model=None, running: tuple[dict[str, float], int] | None = None,
                     recipe: dict | None = None, sessions: list[str] | None = None, scaler=None) -> None:
    import torch
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v.detach().cpu().contiguous()
    if ema_model is not None:
        for k, v in ema_model.state_dict().items():
            tensors[f"ema.{k}"] = v.detach().cpu().contiguous()
    opt = optimizer.state_dict()
    scalars: dict[str, Any] = {}
    for pid, st in opt["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim.{pid}.{key}"] = val.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = val
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {
        "step": str(step),
        "elapsed": repr(elapsed),
        "param_groups": json.dumps(opt["param_groups"]),
        "optim_scalars": json.dumps(scalars),
        "config": json.dumps(asdict(cfg)),
        # the partial sums of the next log line, so a resumed run logs what an uninterrupted one would
        "running": json.dumps({"sums": running[0], "n": running[1]} if running else {"sums": {}, "n": 0}),
        # the task's card (its recipe) and the command of every session so far, checked and kept by --resume
        "card": json.dumps(_plain(recipe if recipe is not None else {})),
        "commands": json.dumps(sessions if sessions is not None else [cfg.command]),
    }
    if scaler is not None and scaler.is_enabled():  # fp16: the loss scale and its growth tracker
        meta["grad_scaler"] = json.dumps(scaler.state_dict())
    with atomic_target(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


#: options a ``--resume`` must keep: they define the run (its schedule, numerics and data); the others (budget,
#: threads, device, cadence of logs and checkpoints, and ``steps``, to extend a run) may change between sessions.
#: The task's own options (its card: data recipe, crop, batch size, regularization, ...) must not change either.
RESUME_FIXED = ("lr", "weight_decay", "schedule", "warmup", "grad_clip", "seed", "amp", "ema")


def _plain(obj: Any) -> Any:
    """``obj`` as its JSON record reads back (tuples as lists, NaN and Inf as None), so that a card recorded in a
    checkpoint compares equal to the same card computed again."""
    def finite(v: Any) -> Any:
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, list):
            return [finite(x) for x in v]
        return v

    return finite(json.loads(json.dumps(obj, default=str)))


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def recipe_changes(saved: dict, current: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """The entries of a task's card that differ between a run's checkpoint and this session, as ``"key old -> new"``.

    Nested entries are named by dotted keys (``data.crop``). An entry one side lacks (a card written by an older
    version) is not compared, nor are the dotted keys in ``ignore``.

    Parameters
    ----------
    saved, current : dict
        The card recorded with the checkpoint and the card of the task resuming it.
    ignore : tuple of str
        Dotted keys that may differ (measurements, not options).

    Returns
    -------
    list of str

    Examples
    --------
    >>> recipe_changes({"data": {"crop": 32, "batch_size": 2}, "reg": "direct"},
    ...                {"data": {"crop": 48, "batch_size": 2}, "reg": "direct", "new": 1})
    ['data.crop 32 -> 48']
    """
    out: list[str] = []

    def walk(old_card: dict, new_card: dict, prefix: str) -> None:
        for k, old in old_card.items():
            key = f"{prefix}{k}"
            if k not in new_card or key in ignore:
                continue
            new = new_card[k]
            if isinstance(old, dict) and isinstance(new, dict):
                walk(old, new, key + ".")
            elif old != new:
                out.append(f"{key} {_short(old)} -> {_short(new)}")

    walk(_plain(saved), _plain(current), "")
    return out


def _load_checkpoint(path: Path, model, optimizer, ema_model=None, cfg=None, recipe: dict | None = None,
                     ignore: tuple[str, ...] = (), scaler=None) -> tuple[int, float, dict, int, list[str]]:
    """Restore a checkpoint; a damaged file, another configuration or changed options (run options or the task's
    ``recipe``, its card) are ``ValueError``s that name the checkpoint.

    Returns the step, elapsed seconds, partial log sums and their count, and the commands of the sessions so far.
    """
    try:
        return _load_checkpoint_checked(path, model, optimizer, ema_model, cfg, recipe, ignore, scaler)
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - safetensors/JSON/torch errors of a damaged or foreign file
        raise _unrestorable(path, err) from err


def _unrestorable(path: Path, err: Exception) -> ValueError:
    """The error of a checkpoint that cannot be read back (``err``: what reading it raised)."""
    return ValueError(f"--resume: {path} cannot be restored ({type(err).__name__}: {str(err).splitlines()[0]}); "
                      "it is damaged or belongs to another model configuration — start a new --out, or "
                      "--init from a model.safetensors")


def _recorded_card(path: Path, meta: dict[str, str]) -> dict | None:
    """The task card a checkpoint was written with; for a checkpoint of an older version (no ``card``), the one in
    the run's ``train_config.json``; None when neither records it."""
    if meta.get("card"):
        return json.loads(meta["card"]) or None
    config = path.parent / "train_config.json"
    if config.exists():
        card = json.loads(config.read_text()).get("card")
        return card if isinstance(card, dict) and card else None
    return None


def init_card(init: str, out: str | os.PathLike, resume: bool, task: str) -> dict:
    """The card of the model a ``linblur train TASK --init INIT`` run starts from, checked to be a ``task`` network
    (:func:`~napari_linblur.models.registry.check_init_card`). A ``--resume`` takes the card its run recorded: the
    checkpoint holds every weight, so the ``--init`` file is not read again (it may be gone). Every trainer takes
    the network configuration of its ``--init`` run from here.
    """
    from napari_linblur.models.registry import check_init_card, read_card

    card = (recorded_card(out) if resume else None) or read_card(init)
    return check_init_card(card, task, f"--init {init}")


def recorded_card(out: str | os.PathLike) -> dict | None:
    """The task card (the recipe) recorded with the training run in ``out``: that of its checkpoint, or for a
    checkpoint of an older version the one in its ``train_config.json``.

    Parameters
    ----------
    out : str or path-like
        The run folder (``--out``).

    Returns
    -------
    dict or None
        None when ``out`` holds no checkpoint, or neither file records a card.

    Raises
    ------
    ValueError
        The checkpoint is damaged (it names the file, like ``--resume`` does).
    """
    path = Path(out) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return _recorded_card(path, meta)
    except Exception as err:  # noqa: BLE001 - safetensors/JSON errors of a damaged file
        raise _unrestorable(path, err) from err


def warn_init_not_read(given: str, started_from: str | None) -> None:
    """Warn that a ``--resume`` does not read ``--init given``: it is not the model the run started from
    (``started_from``, as the run's card records it; None for a run started without one). The checkpoint holds
    every weight and the card keeps the recorded init, so nothing of ``given`` enters the run.

    Parameters
    ----------
    given : str
        The ``--init`` of this session, as the message should name it.
    started_from : str or None
        The init the run's card records, as the message should name it.
    """
    was = started_from if started_from else "none: it started without --init"
    warnings.warn(f"--resume: --init {given} is not the model this run started from ({was}); it is not read: the "
                  "run continues from its checkpoint, which holds every weight, and its card keeps the init it "
                  "recorded", UserWarning, stacklevel=3)


def init_provenance(init: str | os.PathLike) -> dict[str, Any]:
    """Where starting weights come from, for a model card: ``{"from", "sha256", "command", "seconds", "steps",
    "init", "total"}``.

    ``init`` is a shipped name or a ``.safetensors`` path; ``command``, ``seconds`` and ``steps`` are the training
    its own card records and ``init`` that card's own provenance, so a chain of fine-tunings can be re-run from its
    start. ``total`` is the whole training of those weights, every leg of their chain (:func:`recorded_total`), so
    a fine-tune's card can sum its training time (:func:`chain_training`).

    Examples
    --------
    >>> init_provenance("ae-default")["from"]
    'ae-default'
    """
    from napari_linblur.models.registry import model_sha256, read_card

    src = read_card(init)
    training = src.get("training") or {}
    return {"from": os.fspath(init), "sha256": model_sha256(init), "command": training.get("command"),
            "seconds": training.get("seconds"), "steps": training.get("steps"), "init": src.get("init"),
            "total": recorded_total(src)}


def recorded_total(card: dict) -> dict[str, Any]:
    """The whole training of a model as its card records it: ``training_total``, or the minutes total of the cards
    shipped before 0.2.1 (``training_minutes_total``), or else :func:`chain_training` of its ``init`` chain.

    Examples
    --------
    >>> recorded_total({"training": {"seconds": 60.0, "steps": 10}, "training_minutes_total": 3.0})
    {'seconds': 180.0, 'steps': None, 'legs': None}
    """
    total = card.get("training_total")
    if isinstance(total, dict) and total.get("seconds") is not None:
        return {"seconds": total["seconds"], "steps": total.get("steps"), "legs": total.get("legs")}
    if card.get("training_minutes_total") is not None:
        return {"seconds": round(60.0 * float(card["training_minutes_total"]), 1), "steps": None, "legs": None}
    return chain_training(card)


def chain_training(card: dict) -> dict[str, Any]:
    """The training of a model and of every model it was fine-tuned from (its card's ``init`` chain), summed.

    Returns
    -------
    dict
        ``seconds`` and ``steps`` in all (None when a leg did not record them), ``legs`` (the number of runs; None
        when a starting model recorded only its total). Legs recorded before 0.2.1 name their seconds
        ``training_seconds``. A leg that records the ``total`` of its own chain (:func:`init_provenance`) ends the
        walk with that total.

    Examples
    --------
    >>> chain_training({"training": {"seconds": 10.0, "steps": 5}, "init": {"seconds": 2.5, "steps": 1}})
    {'seconds': 12.5, 'steps': 6, 'legs': 2}
    >>> chain_training({"training": {"seconds": 10.0, "steps": 5},
    ...                 "init": {"seconds": 2.5, "steps": 1, "total": {"seconds": 100.0, "steps": None, "legs": None}}})
    {'seconds': 110.0, 'steps': None, 'legs': None}
    """
    training = card.get("training") or {}
    seconds, steps, legs = training.get("seconds"), training.get("steps"), 1
    node = card.get("init")
    while isinstance(node, dict):
        total = node.get("total")
        if isinstance(total, dict) and total.get("seconds") is not None:
            leg_s, leg_steps, leg_n = total["seconds"], total.get("steps"), total.get("legs")
            node = None
        else:
            leg_s, leg_steps, leg_n = node.get("seconds", node.get("training_seconds")), node.get("steps"), 1
            node = node.get("init")
        seconds = None if seconds is None or leg_s is None else seconds + float(leg_s)
        steps = None if steps is None or leg_steps is None else steps + int(leg_steps)
        legs = None if legs is None or leg_n is None else legs + int(leg_n)
    return {"seconds": seconds, "steps": steps, "legs": legs}


class StartsFromInit:
    """What every training task with ``--init`` shares: the provenance of its starting weights for the card, and
    the ``resume_from`` hook the shared loop calls before a ``--resume``.

    A task sets ``self.init`` (a shipped name, a ``.safetensors`` path, or None), reads the weights in
    ``build_model`` only when ``self.resuming`` is false, and puts :meth:`init_record` in its card.
    """

    init: str | None = None
    resuming: bool = False
    _recorded_init: Any = None

    def resume_from(self, card: dict) -> None:
        """Before a ``--resume``: the checkpoint holds every weight, so the ``init`` weights are not read (the
        file may be gone) and the card keeps the init recorded when the run started. An ``init`` that now names
        other weights than that record (by sha256) is not read either, with a warning
        (:func:`warn_init_not_read`).
        """
        from napari_linblur.models.registry import model_sha256

        recorded = card.get("init")
        if self.init:
            if isinstance(recorded, dict):
                try:
                    sha = model_sha256(self.init)
                except (OSError, ValueError):  # moved or deleted: nothing to compare, nothing is read
                    sha = None
                if sha is not None and sha != recorded.get("sha256"):
                    warn_init_not_read(f"{self.init} (sha256 {sha})",
                                       f"{recorded.get('from')} (sha256 {recorded.get('sha256')})")
            elif str(self.init) != recorded:  # a run recorded before 0.2.1 kept its init as a path only
                warn_init_not_read(str(self.init), recorded)
        self.resuming, self._recorded_init = True, recorded

    def init_record(self) -> Any:
        """The card's ``init``: :func:`init_provenance` of ``self.init`` (None without one); a resumed run keeps
        the record made when it started."""
        if self.resuming:
            return self._recorded_init
        return init_provenance(self.init) if self.init else None


def _load_checkpoint_checked(path: Path, model, optimizer, ema_model, cfg, recipe: dict | None = None,
                             ignore: tuple[str, ...] = (), scaler=None) -> tuple[int, float, dict, int, list[str]]:
    import torch
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    saved = json.loads(meta["config"]) if meta.get("config") else {}
    changed: list[str] = []
    if cfg is not None:
        changed += [f"{k} {saved[k]!r} -> {getattr(cfg, k)!r}" for k in RESUME_FIXED
                    if k in saved and saved[k] != getattr(cfg, k)]
    card = _recorded_card(path, meta) if recipe is not None else None
    if card is not None:
        changed += recipe_changes(card, recipe, ignore)
    if changed:
        raise ValueError(f"--resume continues {path.parent} exactly, but these options differ from its "
                         f"checkpoint: {'; '.join(changed)}. Resume with the original options, or start a "
                         "new --out (--init RUN/model.safetensors continues from its weights)")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema_model is not None:
        ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        ema_model.load_state_dict(ema if ema else model.state_dict())
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, key = k.split(".", 2)
            state.setdefault(int(pid), {})[key] = v
    for k, v in json.loads(meta["optim_scalars"]).items():
        pid, key = k.split(".", 1)
        state.setdefault(int(pid), {})[key] = v
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    torch.set_rng_state(tensors["rng.torch"])
    if scaler is not None and scaler.is_enabled() and meta.get("grad_scaler"):
        scaler.load_state_dict(json.loads(meta["grad_scaler"]))
    running = json.loads(meta.get("running") or '{"sums": {}, "n": 0}')
    sessions = json.loads(meta["commands"]) if meta.get("commands") else (
        [saved["command"]] if saved.get("command") else [])
    return int(meta["step"]), float(meta["elapsed"]), dict(running["sums"]), int(running["n"]), list(sessions)


def grad_scaler(device, amp: str):
    """The loss scaler of a run: enabled for ``amp="fp16"`` (CUDA only), where small gradients underflow in
    half precision without it; a disabled scaler (a no-op) otherwise, as bf16 has fp32's exponent range."""
    import torch

    return torch.amp.GradScaler(device.type, enabled=(amp or "off").lower() == "fp16")


def optimizer_step(loss, optimizer, params, scaler, grad_clip: float | None = None) -> bool:
    """One update from ``loss``: backward (through ``scaler``'s loss scale), gradient clipping on the *unscaled*
    gradients, then the optimizer step, which ``scaler`` skips when a gradient overflowed (it then lowers the scale).

    Returns
    -------
    bool
        Whether the optimizer stepped (False only for an fp16 step skipped on overflow).
    """
    import torch

    optimizer.zero_grad(set_to_none=True)
    scale_before = scaler.get_scale() if scaler.is_enabled() else None
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return scale_before is None or scaler.get_scale() >= scale_before


def ema_decay(ema: float, t: int) -> float:
    """Decay of the weight average after ``t`` updates of this run: ``min(ema, (1 + t) / (10 + t))``.

    The warm-up keeps the average from being dominated by the starting weights in short runs.

    Examples
    --------
    >>> round(ema_decay(0.999, 0), 3), round(ema_decay(0.999, 10**6), 3)
    (0.1, 0.999)
    """
    return min(float(ema), (1.0 + t) / (10.0 + t))


def _update_ema(ema_model, model, decay: float) -> None:
    import torch

    with torch.no_grad():
        for pe, pm in zip(ema_model.parameters(), model.parameters(), strict=True):
            pe.mul_(decay).add_(pm.detach(), alpha=1.0 - decay)
        for be, bm in zip(ema_model.buffers(), model.buffers(), strict=True):
            be.copy_(bm)


def _truncate_logs(out: Path, step: int) -> None:
    """After a resume, drop log lines written after the checkpoint so the log has no duplicates."""
    jl = out / "log.jsonl"
    if jl.exists():
        keep = [json.dumps(r) for r in _log_rows(jl) if isinstance(r.get("step"), int) and r["step"] <= step]
        with atomic_target(jl) as tmp:  # a kill here leaves the whole old log, never half of it
            tmp.write_text("".join(ln + "\n" for ln in keep))
        _write_csv(out)


def _log_rows(jl: Path) -> list[dict]:
    """The records of a ``log.jsonl``; a line that is not a JSON object (cut short by a full disk or a killed
    process) is left out with a warning naming the file and line, so that the run can still be resumed."""
    import warnings

    rows = []
    for i, ln in enumerate(jl.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not ln.strip():
            continue
        try:
            row = json.loads(ln)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            warnings.warn(f"{jl}: line {i} is not a log record (cut short?); it is left out", UserWarning,
                          stacklevel=3)
            continue
        rows.append(row)
    return rows


def _write_csv(out: Path) -> None:
    jl = out / "log.jsonl"
    rows = _log_rows(jl) if jl.exists() else []
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with atomic_target(out / "log.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


class RunLock:
    """An exclusive lock on a run folder for the life of a training run: a second ``linblur train`` (or Train
    widget run) into the same ``--out``, a new run or a ``--resume`` alike, is refused instead of interleaving its
    log, checkpoint and model with the first one's. The lock is the operating system's (``flock`` on
    ``OUT/.run.lock``), so a run that is killed (SIGKILL, out of memory) releases it with its process; the file
    itself stays, holding the last holder's process id and host for the message.
    """

    NAME = ".run.lock"

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / self.NAME
        self._fd: int | None = None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock, as before
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held by a live process
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise FileExistsError(f"{out} is being written by another training run ({holder}); wait for it to "
                                  "end, or use another --out") from None
        except OSError:  # a file system without locks (some network mounts): train unlocked, as before
            os.close(fd)
            return
        import socket

        text = f"pid {os.getpid()} on {socket.gethostname()}".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, text, 0)
        self._fd = fd

    def release(self) -> None:
        """Unlock (closing the file releases the ``flock``); idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def train(
    task: Task,
    cfg: TrainConfig,
    *,
    on_log: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train ``task``'s model with ``cfg``; write checkpoints, logs and ``OUT/model.safetensors``.

    Parameters
    ----------
    task : Task
        Supplies the model, deterministic batches, the loss, validation and the model card.
    cfg : TrainConfig
        Steps, learning rate, seed, device, AMP, checkpoint/validation cadence, resume, budget.
    on_log : callable, optional
        Called with every log record (dict with ``step``, ``loss``, ... and ``val_loss`` when validated).
    should_stop : callable, optional
        Polled every step; when True the run checkpoints and returns (``finished=False``).

    Returns
    -------
    TrainResult
        Its ``metrics``, like the card's ``validation``, are those of the saved weights: a run that stops (or a
        session that ends) between two periodic validations validates the step it reached.

    Raises
    ------
    TrainingInterrupted
        (a :class:`KeyboardInterrupt`) after Ctrl-C or SIGTERM in the main thread: the run stops at the next step
        boundary, saves its checkpoint and ``model.safetensors`` like a cancelled run, and ``--resume`` continues it
        exactly.
    """
    import torch

    from napari_linblur.inference.device import autocast_context, resolve_device
    from napari_linblur.models.registry import save_model, write_json_atomic

    cfg.validate()
    out = Path(cfg.out)
    rank, world = _dist_info()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ddp = world > 1
    if ddp:
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
        if backend == "nccl":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
        else:
            device = torch.device("cpu")
    else:
        device = resolve_device(cfg.device)
    autocast_context(device, cfg.amp)  # an impossible precision (fp16 on a CPU) is refused before any file is made

    ckpt = out / CHECKPOINT
    # checked before the folder is made, so that a refused run leaves no empty folder behind
    if cfg.resume and not ckpt.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}")
    lock = None
    if rank == 0:
        if not cfg.resume and ((out / "log.jsonl").exists() or ckpt.exists()):
            raise FileExistsError(f"{out} already holds a training run; use --resume or a new --out folder")
        # a run writes these: a folder holding any of them (a model copied there, the --init weights) is not
        # overwritten; --resume continues the run that wrote them
        held = [name for name in RUN_FILES if (out / name).exists()] if not cfg.resume else []
        if held:
            raise FileExistsError(f"--out {out} already holds {', '.join(held)}, which this run would replace; use a "
                                  "new or empty --out folder")
        make_output_folder(out)
        lock = RunLock(out)  # one process at a time writes a run folder (two would interleave their files)
        for name in (*RUN_FILES, "train_config.json"):  # temporary files of a run killed while writing them
            for left in out.glob(f".{name}.*.tmp"):
                left.unlink(missing_ok=True)
    try:
        resume_from = getattr(task, "resume_from", None)
        if cfg.resume and resume_from is not None:
            recorded = recorded_card(out)
            if recorded is not None:  # the checkpoint restores every weight: the task need not read its init again
                resume_from(recorded)
        seed_everything(cfg.seed)
        model = task.build_model().to(device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scaler = grad_scaler(device, cfg.amp)
        ema_model = None
        if cfg.ema:
            import copy

            ema_model = copy.deepcopy(model).eval()
            for p in ema_model.parameters():
                p.requires_grad_(False)
        start, elapsed0 = 0, 0.0
        running: dict[str, float] = {}
        n_running = 0
        recipe = dict(task.card())  # the task's options as this session starts: checked on resume, kept in checkpoints
        sessions = [cfg.command]
        if cfg.resume:
            start, elapsed0, running, n_running, earlier = _load_checkpoint(
                ckpt, model, optimizer, ema_model, cfg, recipe, tuple(getattr(task, "resume_ignore", ())), scaler)
            sessions = earlier + sessions
            if start > cfg.steps:
                raise ValueError(f"--resume: {out} is at step {start} already; --steps {cfg.steps} would end it before "
                                 f"that (give --steps >= {start} to continue it)")
            if rank == 0:
                _truncate_logs(out, start)
        net = model
        if ddp:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if rank == 0:
            write_json_atomic(out / "train_config.json", {"task": task.name, **asdict(cfg), "card": recipe,
                                                          **({"sessions": sessions} if len(sessions) > 1 else {})})
            if not cfg.resume:  # a run killed before its first periodic checkpoint can still be resumed (from step 0)
                _save_checkpoint(ckpt, model, optimizer, 0, 0.0, cfg, ema_model, ({}, 0), recipe, sessions, scaler)

        bar = None
        if cfg.progress and rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=start, desc=f"train {task.name}", unit="step", dynamic_ncols=True)
        t0 = time.perf_counter() - elapsed0
        budget_t0 = time.perf_counter()  # --max-minutes is this session's budget: a --resume gets a new one
        last_val: dict[str, float] = {}
        val_step: int | None = None  # the step whose weights last_val measured
        step = start
        finished = True
        cancelled = False
        model.train()
        with _StopSignals(enabled=not ddp) as signals:
            while step < cfg.steps:
                if signals.received or (should_stop is not None and should_stop()):
                    finished, cancelled = False, True
                    break
                if cfg.max_minutes is not None and (time.perf_counter() - budget_t0) > 60 * cfg.max_minutes:
                    finished = False
                    break
                for g in optimizer.param_groups:
                    g["lr"] = learning_rate(cfg, step)
                batch = task.batch(step, rank=rank, world=world)
                with autocast_context(device, cfg.amp):
                    loss, parts = task.loss(net, _to_device(batch, device, cfg.channels_last))
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower --lr or disable --amp, "
                                             "in a new --out (a --resume keeps this run's options)")
                optimizer_step(loss, optimizer, params, scaler, cfg.grad_clip)
                if ema_model is not None:
                    _update_ema(ema_model, model, ema_decay(cfg.ema, step))
                step += 1
                parts = {"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}}
                for k, v in parts.items():
                    running[k] = running.get(k, 0.0) + v
                n_running += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{parts['loss']:.4f}",
                                    **({"val": f"{last_val['val_loss']:.4f}"} if last_val else {}))
                do_val = step % cfg.val_every == 0 or step == cfg.steps
                if rank == 0 and (step % cfg.log_every == 0 or do_val):
                    record = {"step": step, "lr": learning_rate(cfg, step - 1),
                              "time_s": round(time.perf_counter() - t0, 2)}
                    record.update({k: v / max(1, n_running) for k, v in running.items()})
                    running, n_running = {}, 0
                    if do_val:
                        model.eval()
                        last_val, val_step = _validation(task, ema_model or model, device, cfg.amp), step
                        model.train()
                        record.update(last_val)
                    with open(out / "log.jsonl", "a") as f:
                        f.write(json.dumps(record) + "\n")
                    if on_log is not None:
                        on_log(record)
                if rank == 0 and (step % cfg.ckpt_every == 0 or step == cfg.steps):
                    _save_checkpoint(ckpt, model, optimizer, step, time.perf_counter() - t0, cfg, ema_model,
                                     (running, n_running), recipe, sessions, scaler)
            seconds = time.perf_counter() - t0
            if bar is not None:
                bar.close()
            model_path = out / MODEL
            # stopped before its first step (a cancel, a signal, a budget spent before it): the checkpoint (step 0)
            # can be resumed, but no model is saved — its weights would be the untrained starting ones, offered as a
            # result
            untrained = step == 0
            if untrained and not cancelled:
                warnings.warn(f"the --max-minutes budget ended before the first step: no model was saved; "
                              f"{out / CHECKPOINT} can be continued with --resume", UserWarning, stacklevel=2)
            if rank == 0:
                _save_checkpoint(ckpt, model, optimizer, step, seconds, cfg, ema_model, (running, n_running), recipe,
                                 sessions, scaler)
            if rank == 0 and not untrained:
                model.eval()
                final = ema_model if ema_model is not None else model
                if val_step != step:  # a run stopped (or resumed) between two validations: measure the saved weights
                    last_val, val_step = _validation(task, final, device, cfg.amp), step
                card = dict(task.card())
                card.setdefault("task", task.name)
                finalize = getattr(task, "finalize", None)
                if finalize is not None and not cancelled:
                    last_val, entries = finalize(final, last_val)
                    card.update(entries)
                card["training"] = {
                    "command": cfg.command,
                    **({"command_effective": cfg.command_effective} if cfg.command_effective else {}),
                    "seed": cfg.seed,
                    "steps": step,
                    "steps_planned": cfg.steps,
                    "finished": finished,
                    "seconds": round(seconds, 1),
                    "device": str(device),
                    "amp": cfg.amp,
                    "lr": cfg.lr,
                    "warmup": cfg.warmup,
                    "ema": cfg.ema,
                    "channels_last": cfg.channels_last,
                    "torch": torch.__version__,
                    "hardware": hardware_description(device),
                }
                if len(sessions) > 1:  # a resumed run: the command of every session, the first one started it
                    card["training"]["sessions"] = sessions
                card["validation"] = last_val
                if isinstance(card.get("init"), dict):  # a fine-tune: its training and its init weights' training
                    card["training_total"] = chain_training(card)
                save_model(final, model_path, card)
            if rank == 0:
                # after the model: a log.csv held open elsewhere (a spreadsheet on Windows) must not cost the model
                try:
                    _write_csv(out)
                except OSError as err:
                    warnings.warn(f"{out / 'log.csv'} could not be written ({err}); log.jsonl holds the same rows",
                                  UserWarning, stacklevel=2)
            if ddp:
                import torch.distributed as dist

                dist.barrier()
            result = TrainResult(model_path, step, finished, last_val, seconds)
            if signals.received and not finished:
                held = f"{out / CHECKPOINT} holds" if untrained else f"{out / CHECKPOINT} and {out / MODEL} hold"
                raise TrainingInterrupted(
                    f"{signals.received} at step {step} of {cfg.steps}: {held} this state; continue with the same "
                    "command and --resume", result, signals.received)
        return result
    finally:
        if lock is not None:
            lock.release()


def _validation(task: Task, model, device, amp: str) -> dict[str, float]:
    """``task.validate(model)`` as plain floats, without gradients and in the run's precision (``amp``): the same
    measurement for the periodic validations and for the weights a run saves."""
    import torch

    from napari_linblur.inference.device import autocast_context

    with torch.no_grad(), autocast_context(device, amp):
        return {k: float(v) for k, v in task.validate(model).items()}


def hardware_description(device) -> dict[str, Any]:
    """What the weights were computed on, for the model card.

    Reduced-precision kernels (bf16 autocast) differ between CPU families, so the same command and seed give
    bit-identical weights on the same kind of processor but slightly different ones elsewhere; the card records
    the processor, the instruction set PyTorch dispatched to, the thread count and, on CUDA, the GPU.

    Parameters
    ----------
    device : torch.device or str
        The training device.

    Returns
    -------
    dict
        ``cpu`` (model name from ``/proc/cpuinfo`` or :func:`platform.processor`), ``cpu_capability``,
        ``threads`` and, for a CUDA device, ``gpu``.
    """
    import platform

    import torch

    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    out: dict[str, Any] = {"cpu": cpu or platform.processor() or platform.machine(),
                           "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                           "threads": torch.get_num_threads()}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return out


def _to_device(batch: Any, device, channels_last: bool = False):
    import torch

    if torch.is_tensor(batch):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.ndim == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return {k: _to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device, channels_last) for v in batch)
    return batch
