"""Qt-free backend of the Train widget: build a per-model training task for the shared loop
(:func:`napari_linblur.training.loop.train`) from the widget's choices.

Data sources:

* ``synthetic`` — the task's own on-the-fly data (defocus maps: pixel-shuffled content blurred by random
  defocus maps; deblurring: exact-correspondence synthetic pairs). Not available for the autoencoder, which
  learns from real or synthesized through-focus stacks.
* ``layer`` — an image layer (a z-stack, or fields x planes ``(P, Z, Y, X)``; for defocus maps also a single
  in-focus image) written to an OME-Zarr in the run folder and read by the task's own loader (autoencoder:
  fields of planes, a single stack cut into tiles as fields, :func:`ae_tile_grid`; deblurring: real plane pairs,
  stage 2; defocus maps: the in-focus plane of every stack, pixel-shuffled, as content —
  ``linblur train defocus --content-from``).
* ``path`` — a dataset on disk (``linblur synth`` OME-Zarr, BBBC006 folder, any z-stack ``open_zstack`` reads).

Starting point: new weights of the chosen size, or *fine-tuning* a trained model (the shipped ``<kind>-default``
or one trained earlier), whose architecture the run keeps. Defocus runs train on the data recipe of the shipped
model (or of the model they fine-tune: noise input, σ-map range, contrast, camera ranges), not on the bare
defaults, and re-estimate BatchNorm statistics at the end, as ``linblur train defocus`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = {
    "defocus": "Defocus map — HDME-Net (paper 001)",
    "deblur": "Single-image deblurring — DRBNet (paper 002)",
    "ae": "Latent autoencoder — blur synthesis / pair deblurring (paper 000)",
}
SOURCES = {"synthetic": "synthetic (built in)", "layer": "image layer", "path": "dataset on disk"}


def presets(kind: str) -> list[str]:
    """Names of the architecture configurations of ``kind`` (smallest first where known)."""
    if kind == "defocus":
        from napari_linblur.models.hrnet import PRESETS

        names = list(PRESETS)
    elif kind == "deblur":
        from napari_linblur.models.drbnet import CONFIGS

        names = list(CONFIGS)
    elif kind == "ae":
        from napari_linblur.models.autoencoder import CONFIGS

        names = list(CONFIGS)
    else:
        raise ValueError(f"kind={kind!r}; use one of {list(KINDS)}")
    order = {"tiny": 0, "default": 1}
    return sorted(names, key=lambda n: order.get(n, 2))


def sources(kind: str) -> list[str]:
    """Data sources a task of ``kind`` can learn from."""
    return ["layer", "path"] if kind == "ae" else ["synthetic", "layer", "path"]


@dataclass
class TrainRequest:
    """What the user chose in the widget."""

    kind: str
    preset: str
    source: str = "synthetic"
    data_path: str | None = None
    channel: str | int | None = None
    patch: int = 64
    batch: int = 4
    seed: int = 0
    #: fine-tune this model (a shipped name or a ``.safetensors`` path; its architecture is kept) instead of
    #: starting from new weights of ``preset``
    init: str | None = None


def check_patch_fits(shape: tuple[int, ...], patch: int, what: str) -> None:
    """The training patch (crop) must fit in a plane of ``shape`` (``(..., Y, X)``).

    Raises
    ------
    ValueError
        naming the plane and patch sizes and what to change.

    Examples
    --------
    >>> check_patch_fits((9, 48, 64), 32, "layer 'img'")
    >>> check_patch_fits((9, 16, 16), 32, "layer 'img'")  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    ValueError: layer 'img' has planes of 16 x 16 px, smaller than the 32 px training patch: set 'patch (px)' to at
    most 16, or train on larger images
    """
    h, w = int(shape[-2]), int(shape[-1])
    if h < patch or w < patch:
        raise ValueError(f"{what} has planes of {h} x {w} px, smaller than the {patch} px training patch: set "
                         f"'patch (px)' to at most {min(h, w)}, or train on larger images")


def check_varies(data: Any, what: str) -> None:
    """Training data must have image content: a constant (e.g. all-zero) or all-NaN array teaches nothing.

    Reads the whole array (numpy; dask is computed chunk by chunk).

    Raises
    ------
    ValueError
        naming the array and its single value.

    Examples
    --------
    >>> import numpy as np
    >>> check_varies(np.zeros((3, 8, 8)), "layer 'zeros'")  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    ValueError: layer 'zeros' is constant (every pixel is 0): there is nothing to learn from; pick a layer with image
    content
    """
    import warnings

    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        if type(data).__module__.startswith("dask"):
            import dask
            import dask.array as da

            lo, hi, bad = dask.compute(da.nanmin(data), da.nanmax(data), da.count_nonzero(~da.isfinite(data)))
        else:
            data = np.asarray(data)
            lo, hi, bad = data.min(), data.max(), 0
            if not (np.isfinite(lo) and np.isfinite(hi)):  # NaN or Inf pixels: the range of the others
                lo, hi = np.nanmin(data), np.nanmax(data)
                bad = int(np.count_nonzero(~np.isfinite(data)))
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{what} has no finite pixel values (all NaN or Inf): pick a layer with image content")
    if bad:
        raise ValueError(f"{what} has {int(bad)} NaN or Inf pixel(s): training needs finite values everywhere "
                         "(their losses would be NaN); fill or crop them first")
    if hi <= lo:
        raise ValueError(f"{what} is constant (every pixel is {lo:g}): there is nothing to learn from; pick a "
                         "layer with image content")


#: the autoencoder splits fields 7:1:2 into train/validation/test (:func:`napari_linblur.training.ae.split_fields`)
AE_MIN_FIELDS = 3
#: a single stack is cut into about this many tiles (fields) when the planes are large enough
AE_TILE_TARGET = 10


def ae_tile_grid(shape: tuple[int, ...], patch: int, what: str) -> tuple[int, int]:
    """How the planes of an autoencoder dataset of ``shape`` (``(Z, Y, X)`` one stack, ``(P, Z, Y, X)`` fields x
    planes) are cut into tiles so it has the fields a train/validation/test split needs.

    The autoencoder splits *fields* (stacks) 7:1:2; data with fewer than :data:`AE_MIN_FIELDS` fields (an
    ordinary z-stack is one) has every field cut into ``rows x cols`` spatial tiles of the same planes, each tile
    a field, at least ``patch`` px on each side. Among the grids with at least :data:`AE_TILE_TARGET` fields the
    one with the squarest (then largest) tiles is taken, else the grid with the most tiles.

    Returns
    -------
    (rows, cols)
        ``(1, 1)`` when the data already has enough fields.

    Raises
    ------
    ValueError
        the planes are too small for enough tiles of the training patch: says the sizes and how to provide
        fields.

    Examples
    --------
    >>> ae_tile_grid((3, 9, 48, 64), 32, "layer 'f'")
    (1, 1)
    >>> ae_tile_grid((9, 64, 64), 32, "layer 'z'")
    (2, 2)
    >>> ae_tile_grid((9, 512, 512), 64, "layer 'z'")
    (4, 4)
    >>> ae_tile_grid((9, 48, 64), 32, "layer 'z'")  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    ValueError: layer 'z' is a single z-stack of 48 x 64 px planes: the autoencoder learns from at least 3 fields
    (stacks) to split them into training, validation and test, and these planes are too small to cut into 3 tiles of
    the 32 px training patch; give it 3 or more stacks (a (fields, Z, Y, X) layer, or a dataset on disk with several
    fields), larger planes, or set 'patch (px)' to at most 16
    """
    import math

    n = int(math.prod(shape[:-3])) if len(shape) > 3 else 1
    if n >= AE_MIN_FIELDS:
        return (1, 1)
    h, w = int(shape[-2]), int(shape[-1])
    need = -(-AE_MIN_FIELDS // n)  # tiles per field
    cands = [(r, c) for r in range(1, h // patch + 1) for c in range(1, w // patch + 1) if r * c >= need]
    if not cands:
        stacks = "a single z-stack" if n == 1 else f"{n} z-stacks (fields)"
        # the largest patch (a multiple of 16, the patch box's step) that still gives enough tiles
        best = max(min(h // r, w // -(-need // r)) for r in range(1, need + 1)) // 16 * 16
        hint = f", or set 'patch (px)' to at most {best}" if best >= 16 else ""
        raise ValueError(
            f"{what} is {stacks} of {h} x {w} px planes: the autoencoder learns from at least {AE_MIN_FIELDS} fields "
            f"(stacks) to split them into training, validation and test, and these planes are too small to cut into "
            f"{AE_MIN_FIELDS} tiles of the {patch} px training patch; give it {AE_MIN_FIELDS} or more stacks (a "
            f"(fields, Z, Y, X) layer, or a dataset on disk with several fields), larger planes{hint}"
        )

    def key(rc):
        r, c = rc
        squareness = round(abs(math.log((h / r) / (w / c))), 1)
        if n * r * c >= AE_TILE_TARGET:
            return (0, squareness, r * c)
        return (1, -r * c, squareness)

    return min(cands, key=key)


def tile_fields(data: Any, grid: tuple[int, int]) -> Any:
    """An :class:`~napari_linblur.training.ae.AEDataset` whose every field is cut into ``rows x cols`` spatial
    tiles of the same planes (:func:`ae_tile_grid`), each a field named ``<field>_y<row>x<col>``."""
    import numpy as np

    from napari_linblur.training.ae import AEDataset, FieldStack

    rows, cols = grid
    if (rows, cols) == (1, 1):
        return data
    out = []
    for f in data.fields:
        h, w = f.planes.shape[-2:]
        ys = np.linspace(0, h, rows + 1).astype(int)
        xs = np.linspace(0, w, cols + 1).astype(int)
        for i in range(rows):
            for j in range(cols):
                win = (slice(ys[i], ys[i + 1]), slice(xs[j], xs[j + 1]))
                out.append(FieldStack(
                    f"{f.name}_y{i}x{j}", np.ascontiguousarray(f.planes[(Ellipsis, *win)]), f.defocus_um,
                    f.plane_index, None if f.truth is None else np.ascontiguousarray(f.truth[(Ellipsis, *win)]),
                ))
    meta = {**data.meta, "n_fields": len(out), "field_names": [f.name for f in out],
            "tiles": {"grid": [int(rows), int(cols)],
                      "fields_before": int(data.meta.get("n_fields", len(data.fields)))}}
    return AEDataset(data.path, data.channel, out, data.kind, recipe=data.recipe, seed=data.seed, meta=meta)


def write_layer_dataset(data: Any, name: str, scale: list[float], out: Path, kind: str, patch: int, *,
                        check_contents: bool, progress: Any = None) -> str:
    """Write a layer's full-resolution ``data`` (captured on the GUI thread when the run was started) to
    ``out/data.ome.zarr`` for the task's own loader, after checking it (:func:`check_layer_data`) and, with
    ``check_contents`` (a lazy layer, read here in the worker), that it is finite and not constant. ``progress``
    is the writer's (:func:`~napari_linblur.io.omezarr.write_ome_zarr`): an exception it raises (a cancel) stops the
    write and leaves nothing."""
    from napari_linblur.io.omezarr import write_ome_zarr

    check_layer_data(data, name, kind, patch, contents=check_contents)
    axes = {2: "yx", 3: "zyx", 4: "tzyx"}[data.ndim]
    path = Path(out) / "data.ome.zarr"
    write_ome_zarr(path, data, axes=axes, scale=[abs(float(s)) for s in scale], overwrite=True, pyramid_levels=1,
                   progress=progress)
    return str(path)


def check_layer_data(data: Any, name: str, kind: str, patch: int, *, contents: bool) -> None:
    """A layer's full-resolution data is trainable by a ``kind`` model: a z-stack ``(Z, Y, X)`` or
    ``(fields, Z, Y, X)`` whose planes hold the training patch (defocus maps: also one in-focus image, any size;
    autoencoder: enough fields, or planes large enough to tile, :func:`ae_tile_grid`), and (``contents``) finite
    and not constant (reads the data).

    Raises
    ------
    ValueError
        naming the layer, the problem and the accepted form.
    """
    content = kind == "defocus"  # in-focus content: one image is enough, any size
    if data.ndim < (2 if content else 3):
        raise ValueError(f"{name!r} is a single plane; training needs a z-stack (Z, Y, X)")
    if data.ndim > 4:
        raise ValueError(f"{name!r} has {data.ndim} dimensions; use (Z, Y, X) or (fields, Z, Y, X)")
    if not content:
        check_patch_fits(tuple(data.shape), patch, f"layer {name!r}")
    if kind == "ae":
        ae_tile_grid(tuple(data.shape), patch, f"layer {name!r}")
    if contents:
        check_varies(data, f"layer {name!r}")


def check_run_folder(out: Path) -> None:
    """The run folder must be a folder (new or existing), not a file, nor inside a file.

    Raises
    ------
    ValueError
        naming the file in the way.
    """
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                where = "is a file" if p == out else f"is inside {p}, which is a file"
                raise ValueError(f"run folder {out} {where}: choose a folder (new or existing) for the run")
            return


def _dataset_shape(path: str, channel) -> tuple[int, ...] | None:
    """The shape of a dataset on disk (opened lazily), or None when it cannot be opened here (the task's own
    loader then reports why)."""
    try:
        from napari_linblur.io.readers import open_zstack

        return tuple(open_zstack(path, channel=channel).shape)
    except Exception:  # noqa: BLE001
        return None


def init_card(kind: str, init: str) -> dict:
    """The card of the model a run fine-tunes, checked to be a ``kind`` model.

    Raises
    ------
    ValueError
        a missing or corrupt file, or a model of another kind.
    """
    from napari_linblur.models.registry import check_init_card, read_card

    return check_init_card(read_card(init), kind, str(init))


def build_task(req: TrainRequest) -> Any:
    """The training task for :func:`napari_linblur.training.loop.train`.

    Raises
    ------
    ValueError
        an unknown kind/preset, a source the task cannot learn from, or a missing dataset path.
    """
    if req.kind not in KINDS:
        raise ValueError(f"kind={req.kind!r}; use one of {list(KINDS)}")
    if req.source not in sources(req.kind):
        raise ValueError(
            f"{KINDS[req.kind]} cannot learn from {SOURCES.get(req.source, req.source)}; "
            f"use {' or '.join(SOURCES[s] for s in sources(req.kind))}"
        )
    if req.source in ("layer", "path") and not req.data_path:
        raise ValueError("choose the training data (an image layer or a dataset path)")
    if req.source == "path" and req.kind in ("deblur", "ae"):
        shape = _dataset_shape(req.data_path, req.channel)
        if shape is not None and len(shape) >= 2:
            check_patch_fits(shape, req.patch, f"the dataset {req.data_path}")
    card = init_card(req.kind, req.init) if req.init else None
    if card is None and req.preset not in presets(req.kind):
        raise ValueError(f"model size {req.preset!r}; use one of {presets(req.kind)}")
    config = dict(card["config"]) if card and card.get("config") else req.preset
    if req.kind == "defocus":
        from napari_linblur.models.hrnet import preset_config
        from napari_linblur.training.defocus import DefocusDataConfig, DefocusTask, card_recipe

        render = max(req.patch + 8, int(req.patch * 1.5))
        recipe = card_recipe(req.init or "defocus-default")
        own = {"content_from": req.data_path, "content_channel": req.channel} if req.source != "synthetic" else {}
        data = DefocusDataConfig(**{**recipe, "crop": req.patch, "render_size": render, "batch_size": req.batch,
                                    "pool_size": max(4, 4 * req.batch), "val_samples": max(2, req.batch), **own})
        model_cfg = config if isinstance(config, dict) else preset_config(config)
        name = (card or {}).get("config_name") or req.preset
        return DefocusTask(model_cfg, data, seed=req.seed, config_name=name, init=req.init)
    if req.kind == "deblur":
        from napari_linblur.training.deblur import DeblurData, DeblurTask

        data = DeblurData(patch=req.patch, batch=req.batch)
        if req.source == "synthetic":
            return DeblurTask(stage=1, config=config, data=data, seed=req.seed, val_size=max(2, req.batch),
                              init=req.init)
        return DeblurTask(stage=2, config=config, data=data, seed=req.seed, real_data=req.data_path,
                          real_fraction=1.0, val_size=max(2, req.batch), init=req.init)
    from napari_linblur.training.ae import AETask, load_fields

    fields = load_fields(req.data_path, channel=req.channel)
    # fewer than 3 fields (a single z-stack): cut the planes into tiles, each a field of the split
    n = int(fields.meta.get("n_fields", len(fields.fields)))
    plane = fields.fields[0].planes.shape[-2:] if fields.fields else (0, 0)
    grid = ae_tile_grid((n, 1, *plane), req.patch, f"the dataset {req.data_path}")
    fields = tile_fields(fields, grid)
    extra = {"data_tiles": {"grid": list(grid), "fields_before": n,
                            "note": "each field cut into rows x cols spatial tiles, each tile a field of the split"}
             } if grid != (1, 1) else None
    return AETask(fields, config=config, batch_size=req.batch, crop=req.patch, seed=req.seed, init=req.init,
                  extra_card=extra)

