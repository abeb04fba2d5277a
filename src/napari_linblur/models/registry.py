"""Model registry: save and load weights as safetensors with a model card, verify hashes, list shipped models.

A model is a ``torch.nn.Module`` built as ``Architecture(**config)``. On disk it is

* ``NAME.safetensors`` — the weights, with the model card (JSON) in the safetensors metadata, so a single file
  trained by a user is self-describing;
* ``NAME.json`` — the model card again, plus the file's ``sha256``. Shipped models live in
  ``napari_linblur/models/weights/`` and their hash is verified on every load.

Nothing is ever unpickled and nothing is downloaded.
"""

from __future__ import annotations

import collections
import hashlib
import importlib
import json
import math
import os
import threading
from pathlib import Path
from typing import Any

from napari_linblur.errors import MissingFileError
from napari_linblur.io.atomic import atomic_target

WEIGHTS_DIR = Path(__file__).parent / "weights"

#: architecture name in a card -> "module:Class"
ARCHITECTURES: dict[str, str] = {
    "LinearLatentAE": "napari_linblur.models.autoencoder:LinearLatentAE",
    "HDMENet": "napari_linblur.models.hrnet:HDMENet",
    "DRBNet": "napari_linblur.models.drbnet:DRBNet",
}

#: architecture -> the tasks its cards may name (a card naming another task is inconsistent)
ARCHITECTURE_TASKS: dict[str, tuple[str, ...]] = {"LinearLatentAE": ("ae",), "HDMENet": ("defocus",),
                                                  "DRBNet": ("deblur",)}

#: task -> the architecture of its networks
TASK_ARCHITECTURE: dict[str, str] = {t: arch for arch, tasks in ARCHITECTURE_TASKS.items() for t in tasks}

#: operation -> name of the shipped default model
DEFAULTS: dict[str, str] = {"ae": "ae-default", "defocus": "defocus-default", "deblur": "deblur-default"}

TRAIN_HINT = {
    "ae": "linblur train ae --data DATA.zarr --out RUN/",
    "defocus": "linblur train defocus --out RUN/",
    "deblur": "linblur train deblur --out RUN/",
}


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def list_models() -> list[str]:
    """Names of the models shipped inside the package.

    Returns
    -------
    list of str
        Sorted names (e.g. ``"ae-default"``) of every ``NAME.json`` model card in the package's ``weights/``
        folder that has its ``NAME.safetensors`` next to it; each is accepted by :func:`load_model`. Empty when
        none is shipped.

    Examples
    --------
    >>> isinstance(list_models(), list)
    True
    """
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.json") if (WEIGHTS_DIR / f"{p.stem}.safetensors").exists())


def read_card(name_or_path: str | os.PathLike) -> dict:
    """Return the model card of a shipped name or a ``.safetensors`` path (no weights are loaded)."""
    path, card, _ = _locate(name_or_path)
    return card


def _read_metadata_card(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # noqa: BLE001 - any parse failure means a corrupt file
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from err
    if "card" not in meta:
        raise ValueError(f"{path} has no napari-linblur model card in its metadata; save models with save_model")
    return _card_object(meta["card"], f"the model card in {path}")


def _card_object(text: str, where: str) -> dict:
    """Parse a model card: a JSON object, else a ``ValueError`` naming where it came from."""
    try:
        card = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON ({err})") from err
    if not isinstance(card, dict):
        raise ValueError(f"{where} is not a JSON object (got {type(card).__name__}); a model card is a mapping")
    return card


def model_file(name_or_path: str | os.PathLike) -> Path:
    """The ``.safetensors`` file of a shipped name or a model path (checked to exist and be a model file).

    Examples
    --------
    >>> model_file("ae-default").name
    'ae-default.safetensors'
    """
    return _locate(name_or_path)[0]


def model_sha256(name_or_path: str | os.PathLike) -> str:
    """The sha256 of a model's weight file (a shipped name or a ``.safetensors`` path): how cards name the model
    a run started from (``init``), continued or used (a feature loss).

    Examples
    --------
    >>> model_sha256("ae-default") == read_card("ae-default")["sha256"]
    True
    """
    return sha256_file(model_file(name_or_path))


def _locate(name_or_path: str | os.PathLike) -> tuple[Path, dict, str | None]:
    """Resolve to (weights path, card, expected sha256 or None)."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"model must be a shipped name or a .safetensors path, got {type(name_or_path).__name__}")
    text = os.fspath(name_or_path)
    if not text.strip():
        raise ValueError(f"model is empty ({text!r}); give a shipped name ({', '.join(list_models())}) or a "
                         ".safetensors path, or None for the operation's default")
    as_path = Path(text)
    shipped = (WEIGHTS_DIR / f"{text}.safetensors").exists() and (WEIGHTS_DIR / f"{text}.json").exists()
    # a shipped name (e.g. ae-default) always means the shipped model, whatever the current folder holds
    if not shipped and (as_path.suffix == ".safetensors" or os.sep in text or as_path.exists()):
        if as_path.is_dir():
            raise ValueError(f"{as_path} is a folder; pass the .safetensors file inside it")
        if not as_path.exists():
            raise MissingFileError(f"model file {as_path} does not exist")
        if as_path.suffix != ".safetensors":
            raise ValueError(f"{as_path}: models load only from .safetensors files (no pickles)")
        sidecar = as_path.with_suffix(".json")
        expected = None
        if sidecar.exists():
            try:
                text = sidecar.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise ValueError(f"model card {sidecar} cannot be read ({type(err).__name__}: {err})") from err
            expected = _card_object(text, f"model card {sidecar}").get("sha256")
            if expected is not None and not (isinstance(expected, str) and len(expected) == 64
                                             and all(ch in "0123456789abcdef" for ch in expected.lower())):
                raise ValueError(f"model card {sidecar}: its sha256 must be 64 hexadecimal digits, got "
                                 f"{expected!r}; the card was edited or is damaged")
        return as_path, _read_metadata_card(as_path), expected
    weights = WEIGHTS_DIR / f"{text}.safetensors"
    card_path = WEIGHTS_DIR / f"{text}.json"
    if not weights.exists() or not card_path.exists():
        available = ", ".join(list_models()) or "none shipped yet"
        raise ValueError(f"unknown model {text!r}; shipped models: {available}; or pass a .safetensors path")
    card = _card_object(card_path.read_text(), f"shipped model card {card_path}")
    if not card.get("sha256"):
        raise ValueError(f"shipped model card {card_path} has no sha256: the shipped weights cannot be verified "
                         "(reinstall napari-linblur)")
    return weights, card, card["sha256"]


def build_model(card: dict):
    """Instantiate the architecture named in ``card`` with its config (random weights)."""
    arch = card.get("architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(f"model card names unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    task = card.get("task")
    if task is not None and ARCHITECTURE_TASKS.get(arch) and task not in ARCHITECTURE_TASKS[arch]:
        raise ValueError(f"model card says task {task!r} for a {arch}, which is a "
                         f"{' / '.join(ARCHITECTURE_TASKS[arch])} network: the card is inconsistent")
    module_name, cls_name = ARCHITECTURES[arch].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    config = card.get("config", {})
    if not isinstance(config, dict):
        raise ValueError(f"model card's config must be a mapping, got {type(config).__name__}")
    bad = {k: v for k, v in config.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise ValueError(f"model card's config holds non-finite values {bad}: the card was edited or is damaged")
    try:
        return cls(**config)
    except (TypeError, ValueError, RuntimeError) as err:  # e.g. a negative width: torch's "negative dimension"
        raise ValueError(f"model card's config does not fit a {arch} ({type(err).__name__}: {err}): the card names "
                         "the wrong architecture or was edited") from err


def load_run(run_dir: str | os.PathLike, task: str):
    """The model a training run wrote (``RUN/model.safetensors``) and a copy of its card without the hash entries.

    Used when shipping a run into the package; a missing run is a ``FileNotFoundError`` naming the command to run.
    """
    src = Path(run_dir) / "model.safetensors"
    if not src.exists():
        raise MissingFileError(f"{src}: train a model first (linblur train {task} ... --out RUN/)")
    model = load_model(src, device="cpu")
    return model, {k: v for k, v in model.card.items() if k not in ("sha256", "weights")}


def model_arg(text: str | os.PathLike) -> str:
    """``--model``-style value: a shipped model name (``defocus-default``) stays a name; a model file that exists
    becomes its absolute path, so that dask workers started in another folder (``--scheduler`` of a cluster
    started elsewhere) load the same file; anything else is kept for the loader to refuse with its message.

    Examples
    --------
    >>> model_arg("defocus-default")
    'defocus-default'
    """
    text = os.fsdecode(text)
    if text in list_models() or not os.path.isfile(text):
        return text
    return os.path.abspath(text)


def init_weights(model, init, architecture: str):
    """Copy the weights of a saved model into ``model``, to continue training from it.

    ``init`` is a shipped name, a ``.safetensors`` path, or a model already loaded with :func:`load_model`. It must
    be of ``architecture`` and have exactly ``model``'s parameters (strict load); used by every training task's
    ``--init``.

    Returns
    -------
    dict
        The card of the model the weights came from (for provenance in the new card).
    """
    src = init if hasattr(init, "state_dict") else load_model(init, device="cpu")
    card = getattr(src, "card", {}) or {}
    label = str(card.get("name") or card.get("sha256", "")[:12]) if hasattr(init, "state_dict") else str(init)
    check_init_card(card, ARCHITECTURE_TASKS[architecture][0], f"init={label!r}")
    try:
        model.load_state_dict(src.state_dict(), strict=True)
    except RuntimeError:
        theirs, ours = card.get("config") or {}, getattr(model, "config", None) or {}
        what = config_differences(theirs, ours) or f"its config: {theirs}"
        raise ValueError(f"init={label!r} was trained with another network configuration than this run's ({what}); "
                         "train with the configuration it was trained with (linblur train ae: --config / "
                         "--model-config)") from None
    return card


def config_differences(theirs: dict, ours: dict) -> str:
    """The entries in which an init model's network configuration (``theirs``) and a run's (``ours``) differ, as
    text for an error message; empty when they agree.

    Examples
    --------
    >>> config_differences({"channels": [16, 32]}, {"channels": [8, 16]})
    'channels: [16, 32] in the init model, [8, 16] here'
    """
    theirs, ours = dict(theirs or {}), dict(ours or {})
    return "; ".join(f"{k}: {theirs.get(k)!r} in the init model, {ours.get(k)!r} here"
                     for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k))


def check_init_card(card: dict, task: str, label: str) -> dict:
    """``card``, checked to be the card of a ``task`` network: the model a training run continues (``--init``).
    ``label`` names the model in the message (e.g. ``"--init x.safetensors"``). Every trainer and the training
    widget check their init model here.

    Examples
    --------
    >>> check_init_card({"architecture": "HDMENet"}, "ae", "--init m.safetensors")
    Traceback (most recent call last):
    ...
    ValueError: --init m.safetensors is a HDMENet (defocus) model, not a LinearLatentAE: continue an ae model (e.g. ...
    """
    arch, want = card.get("architecture"), TASK_ARCHITECTURE[task]
    if arch != want:
        kind = f"{arch} ({'/'.join(ARCHITECTURE_TASKS[arch])})" if arch in ARCHITECTURE_TASKS else repr(arch)
        raise ValueError(f"{label} is a {kind} model, not a {want}: continue {'an' if task[0] in 'aeiou' else 'a'} "
                         f"{task} model (e.g. the shipped "
                         f"{DEFAULTS[task]} or a run's model.safetensors)")
    return card


def load_model(name_or_path: str | os.PathLike, *, device: Any = "auto") -> Any:
    """Load a shipped model by name, or any ``.safetensors`` model file saved by napari-linblur.

    Parameters
    ----------
    name_or_path : str or path
        A name from :func:`list_models` (e.g. ``"ae-default"``) or a path to a ``.safetensors`` file.
    device : str or torch.device
        ``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``...

    Returns
    -------
    torch.nn.Module
        In eval mode on ``device``, with the model card as ``model.card`` and its task as ``model.task``.

    Raises
    ------
    ValueError
        Unknown name, corrupt file, hash mismatch, weights that do not fit the architecture, or NaN/Inf weights.
    FileNotFoundError
        A path that does not exist.

    Examples
    --------
    >>> model = load_model("ae-default", device="cpu")
    >>> model.card["architecture"], model.task, model.training
    ('LinearLatentAE', 'ae', False)
    """
    from safetensors.torch import load_file

    from napari_linblur.inference.device import resolve_device

    dev = resolve_device(device)
    path, card, expected = _locate(name_or_path)
    if expected is not None:
        actual = sha256_file(path)
        if actual != expected:
            raise ValueError(
                f"{path} does not match its model card's sha256 (expected {expected[:12]}…, got {actual[:12]}…): "
                "the file is corrupt or was replaced"
                + ("; a training run killed while saving its model leaves this: run its command again with --resume"
                   if path.name == "model.safetensors" and (path.parent / "checkpoint.safetensors").exists() else "")
            )
    try:
        state = load_file(str(path), device="cpu")
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from err
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise ValueError(f"{path}: weight tensor {key!r} holds NaN or Inf values, so every output would be NaN; "
                             "the file is broken (e.g. saved from a diverged training run): retrain or pick another")
    _check_weights_fit(card, state, path)  # before allocating the network the card describes
    model = build_model(card)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit architecture {card.get('architecture')} ({err})") from err
    model.eval().to(dev)
    model.card = card
    model.task = card.get("task") or module_task(model)  # a card without "task": its architecture says it
    return model


def _check_weights_fit(card: dict, state: dict, path: Path) -> None:
    """The network ``card`` describes, built without memory (torch's ``meta`` device), must have exactly the
    tensors of ``state``: an edited card (width 4096 beside the weights of width 16) would otherwise allocate its
    network — hundreds of GB — before the mismatch is found."""
    import torch

    with torch.device("meta"):
        skeleton = build_model(card)
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    problems = [f"{k} is {have[k]} in the file, {want[k]} for the card's config" for k in want
                if k in have and have[k] != want[k]]
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing:
        problems.append(f"missing {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}")
    if extra:
        problems.append(f"unexpected {', '.join(extra[:3])}{' …' if len(extra) > 3 else ''}")
    if problems:
        raise ValueError(f"{path}: weights do not fit architecture {card.get('architecture')} with the card's config "
                         f"({'; '.join(problems[:3])}): the card or the weights were edited, or they belong to "
                         "different models")


def resolve_model(model: Any, task: str, *, device: Any = "auto"):
    """``None`` -> the shipped default for ``task``; a name/path -> loaded; a module -> a copy, in eval mode on
    ``device`` (the caller's module keeps its mode, device and memory layout).

    A module must be of ``task``'s architecture (:func:`module_task`) or declare ``.task``; another network, or a
    module that is none of ours without ``.task``, is a ``TypeError`` naming the kind needed.
    """
    import copy

    import torch

    from napari_linblur.inference.device import resolve_device

    if model is None:
        name = DEFAULTS[task]
        if name not in list_models():
            raise ValueError(
                f"no shipped default model for {task!r} ({name}); train one with `{TRAIN_HINT[task]}` and pass "
                "model='RUN/model.safetensors'"
            )
        model = name
    if isinstance(model, torch.nn.Module):
        _check_module(model, task, "model")
        if getattr(model, "_linblur_copy", False):  # a copy this function made: ours to reuse as it is
            return model.to(resolve_device(device)).eval()
        own = copy.deepcopy(model).to(resolve_device(device)).eval()
        own._linblur_copy = True
        return own
    loaded = load_model(model, device=device)
    if loaded.task != task:
        raise ValueError(f"model {model!r} is a {loaded.task!r} model; this operation needs a {task!r} model")
    return loaded


def module_task(model: Any) -> str | None:
    """The task of a module by its class: ``"ae"``, ``"defocus"`` or ``"deblur"`` for an instance of one of the
    :data:`ARCHITECTURES` (or of a subclass), None for any other object.

    Examples
    --------
    >>> from napari_linblur.models.drbnet import DRBNet
    >>> module_task(DRBNet(widths=(8, 8, 8), kernel_size=3)), module_task(object())
    ('deblur', None)
    """
    for arch, tasks in ARCHITECTURE_TASKS.items():
        module_name, cls_name = ARCHITECTURES[arch].split(":")
        if isinstance(model, getattr(importlib.import_module(module_name), cls_name)):
            return tasks[0]
    return None


def _needed(task: str) -> str:
    arch = [a for a, tasks in ARCHITECTURE_TASKS.items() if task in tasks]
    return f"a {task!r} model" + (f" (a {arch[0]})" if arch else "")


def _check_module(model: Any, task: str, name: str) -> None:
    """Refuse a module that cannot run ``task``: one of our networks made for another task (``TypeError``), a
    module that is none of ours and does not say its task (``TypeError``), or a ``.task`` naming another task
    (``ValueError``, as for a loaded model of the wrong kind)."""
    by_class = module_task(model)
    if by_class is not None and by_class != task:
        raise TypeError(f"{name} is a {type(model).__name__} (a {by_class!r} network); this operation needs "
                        f"{_needed(task)}")
    declared = getattr(model, "task", None)
    if declared is None and by_class is None:
        raise TypeError(f"{name} is a {type(model).__name__}, not a napari-linblur network; this operation needs "
                        f"{_needed(task)}: pass such a module, a shipped name or a .safetensors path (a module of "
                        f"your own that takes the same input can declare itself with {name}.task = {task!r})")
    if declared is not None and declared != task:
        raise ValueError(f"{name} is a {declared!r} model; this operation needs a {task!r} model")


def check_model(model: Any, task: str, *, name: str = "model") -> None:
    """Check, without loading weights, that ``model`` can serve ``task``; raise naming ``name`` otherwise.

    ``None`` (the shipped default, checked when it loads) passes; a module is checked by its class and ``.task``
    (as :func:`resolve_model` does); a name or path must exist and its card name ``task``. For an option an
    operation does not use, so that a wrong value is still an error.

    Raises
    ------
    TypeError
        Not a name, path or module; a module of another kind.
    ValueError, FileNotFoundError
        A card of another task, an unknown name or a missing or unreadable file.
    """
    if model is None:
        return
    import torch

    if isinstance(model, torch.nn.Module):
        _check_module(model, task, name)
        return
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"{name} must be None, a shipped name, a .safetensors path or a torch.nn.Module, "
                        f"got {type(model).__name__}")
    got = _locate(model)[1].get("task")
    if got != task:
        raise ValueError(f"{name} {os.fspath(model)!r} is a {got!r} model; this operation needs a {task!r} model")


def save_model(model, path: str | os.PathLike, card: dict) -> Path:
    """Write ``model``'s weights to ``path`` (.safetensors, atomically) with ``card``; returns the path.

    The card must name ``architecture``, ``task`` and ``config``. A sidecar ``.json`` with the sha256 is
    written next to it.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: model files must end in .safetensors")
    for key in ("architecture", "task", "config"):
        if key not in card:
            raise ValueError(f"model card is missing {key!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    card = {k: v for k, v in card.items() if k != "sha256"}
    with atomic_target(path) as tmp:
        save_file(state, str(tmp), metadata={"card": json.dumps(card, sort_keys=True)})
    full = dict(card, sha256=sha256_file(path), weights=path.name)
    write_json_atomic(path.with_suffix(".json"), full)
    return path


#: the largest shipped weight file SPEC allows (bytes)
SHIPPED_MAX_BYTES = 15_000_000


def save_shipped(model, path: str | os.PathLike, card: dict) -> Path:
    """:func:`save_model` for a model that ships in the package: refused, before anything is written, when its
    weights would exceed SPEC's 15 MB per file (:data:`SHIPPED_MAX_BYTES`). Every task's ``ship_model`` /
    ``export_default`` goes through here.

    Examples
    --------
    >>> import torch
    >>> save_shipped(torch.nn.Linear(2000, 2000), "/no/big.safetensors", {})
    Traceback (most recent call last):
    ...
    ValueError: the weights to ship as /no/big.safetensors hold 16.0 MB; shipped weights must be <= 15 MB ...
    """
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if nbytes > SHIPPED_MAX_BYTES:
        raise ValueError(f"the weights to ship as {path} hold {nbytes / 1e6:.1f} MB; shipped weights must be "
                         f"<= {SHIPPED_MAX_BYTES / 1e6:g} MB (SPEC): train a smaller configuration")
    return save_model(model, path, card)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON (keys sorted, strict: NaN as null) to a temp file and rename it over ``path``."""
    from napari_linblur.io.atomic import write_json_atomic as _write

    _write(path, obj, sort_keys=True)


# ---------------------------------------------------------------------------------------- per-process models
_MODEL_CACHE: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
_CACHE_LOCK = threading.Lock()
#: networks kept per process (the least recently used one goes first): a script that evaluates one checkpoint after
#: another kept every one of them (4 MB each for a defocus model) for the life of the process
MODEL_CACHE_SIZE = 8


def clear_model_cache() -> None:
    """Forget the networks loaded for names and paths in this process (they are loaded again when next used)."""
    with _CACHE_LOCK:
        _MODEL_CACHE.clear()


def model_cache_key(model: Any, device: Any) -> tuple | None:
    """Cache key of a model given by name or path (``None`` for a module, which is not reloadable); a path's size
    and modification time are part of it, so weights retrained into the same file are loaded again rather than
    served stale from the cache."""
    if model is None or isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        spec = os.fsdecode(model) if isinstance(model, bytes) or hasattr(model, "__fspath__") else str(model)
        stamp: tuple = ()  # None or a shipped model's name: its file does not change
        if model is not None:
            try:
                st = os.stat(spec)
                # size and times, and the file's identity: weights saved over it (a new inode) or rewritten in
                # place with its old mtime restored (ctime still moves) are loaded again
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
            except (OSError, ValueError):
                pass
        return ("spec", spec, stamp, _device_key(device))
    return None


def _device_key(device: Any) -> str:
    """The device a model loads on ('auto' and 'cpu' are one device on a machine without a GPU: one copy)."""
    try:
        from napari_linblur.inference.device import resolve_device

        return str(resolve_device(device))
    except Exception:  # noqa: BLE001 - an unknown device: its load says so
        return str(device)


def cached_model(model: Any, task: str, device: Any = "auto", *, channels_last: bool = False):
    """:func:`resolve_model`, loaded once per process for a name or path (a module is resolved each call), in
    channels-last layout when asked (the convolutional networks run faster so on CPU)."""
    key = model_cache_key(model, device)

    def load():
        net = resolve_model(model, task, device=device)
        if channels_last:
            import torch

            net = net.to(memory_format=torch.channels_last)
        return net

    if key is None:
        return load()
    if model is None and task in DEFAULTS:  # None and the default's name are one network, kept once
        key = model_cache_key(DEFAULTS[task], device)
    key = (*key, task, channels_last)
    with _CACHE_LOCK:
        net = _MODEL_CACHE.get(key)
        if net is None:
            net = load()
            for old in [k for k in _MODEL_CACHE if k[1] == key[1] and k[3:] == key[3:]]:
                del _MODEL_CACHE[old]  # earlier weights of the same file
            _MODEL_CACHE[key] = net
            while len(_MODEL_CACHE) > MODEL_CACHE_SIZE:
                _MODEL_CACHE.popitem(last=False)
        else:
            _MODEL_CACHE.move_to_end(key)
    return net


class ModelHandle:
    """A network for per-plane tasks: loaded here (errors at once), and pickled — a dask task sent to a worker — as
    the name or path it came from, to be loaded again once per process where the task runs, not as a copy of its
    weights in every plane's task (a batch of thousands of planes held a copy per plane in the client and the
    scheduler). A module passed in by the caller is carried whole.

    Examples
    --------
    >>> import pickle
    >>> handle = ModelHandle("ae-default", "ae", "cpu")
    >>> len(pickle.dumps(handle)) < 1000, pickle.loads(pickle.dumps(handle)).get().task
    (True, 'ae')
    """

    def __init__(self, model: Any, task: str, device: Any = "auto", *, channels_last: bool = False) -> None:
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            model = model_arg(model)  # a relative file path made absolute: workers in another folder load it too
        self.model, self.task, self.device, self.channels_last = model, task, device, channels_last
        self._net = cached_model(model, task, device, channels_last=channels_last)
        if model_cache_key(model, device) is None:
            self.model = self._net  # a module of the caller's: copied once here, not once per plane

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if model_cache_key(self.model, self.device) is not None:
            state["_net"] = None  # loaded again where it is unpickled
        return state

    def get(self):
        """The loaded network."""
        if self._net is None:
            self._net = cached_model(self.model, self.task, self.device, channels_last=self.channels_last)
        return self._net
