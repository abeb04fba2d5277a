"""Write a synthetic through-focus dataset as OME-Zarr (NGFF 0.5, zarr v3), one field at a time.

Layout at ``out_path``::

    out.zarr/zarr.json                 root group, attributes {"linblur": {"kind": "synthetic-through-focus",
                                       "version", "recipe", "seed", "fields", "planes", "plane_defocus_um",
                                       "channels", "axes": "czyx", "truth": "..."}}
    out.zarr/field_000/                NGFF image (multiscales, one level): array "0", uint16 (C, Z, Y, X),
                                       axes c, z, y, x with scale (1, z_step_um, pixel_um, pixel_um) µm;
                                       attributes "linblur": {field, seed, spawn_key, recipe (realized),
                                       planes, plane_defocus_um}
    out.zarr/field_000/truth/          NGFF image: array "0", float32 (C, Y, X): noise-free in-focus
                                       (0 µm) camera signal, ADU (offset included) -- the deblurring target
    out.zarr/field_001/ ...

Field ``i`` uses ``numpy.random.SeedSequence(seed, spawn_key=(i,))`` (what ``SeedSequence(seed).spawn(n)[i]``
gives), so it can be reproduced alone with :func:`synthesize_field`. Same recipe + seed -> byte-identical
files: fixed zstd codec, no timestamps, fixed key order. The store is written into a hidden temporary
sibling and renamed into place only when complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..io.omezarr import (
    check_not_inside_store,
    check_output_name,
    check_parent_folders,
    check_replaceable,
    failed_write,
    make_temp_sibling,
    move_into_place,
    warn_stale_partial_writes,
)
from .phantoms import cell_phantom
from .recipes import Recipe, get_recipe
from .zstack import through_focus_stack

__all__ = ["field_seed", "synthesize_field", "write_synthetic_dataset"]

FORMAT_VERSION = 1


def field_seed(seed: int, index: int) -> np.random.SeedSequence:
    """The seed sequence of field ``index`` of a dataset made with ``seed``.

    Examples
    --------
    >>> a = np.random.default_rng(field_seed(7, 3)).integers(1 << 30)
    >>> b = np.random.default_rng(np.random.SeedSequence(7).spawn(4)[3]).integers(1 << 30)
    >>> bool(a == b)
    True
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"index must be an int >= 0, got {index!r}")
    return np.random.SeedSequence(int(seed), spawn_key=(int(index),))


def synthesize_field(recipe: str | Recipe | dict, seed: int, index: int = 0) -> dict[str, Any]:
    """Synthesize field ``index`` of a dataset exactly as :func:`write_synthetic_dataset` does.

    Returns
    -------
    field : dict
        ``image`` uint16 (C, Z, Y, X), ``truth`` float32 (C, Y, X) noise-free in-focus ADU,
        ``content`` float32 (C, Y, X) phantom density, ``recipe`` the realized :class:`Recipe`.

    Examples
    --------
    >>> f = synthesize_field(get_recipe("bbbc006-like", shape=(64, 64), keep_even=True), seed=0)
    >>> f["image"].shape, f["truth"].shape
    ((2, 9, 64, 64), (2, 64, 64))
    """
    base = get_recipe(recipe)
    gen = np.random.default_rng(field_seed(seed, index))
    r = base.realize(gen)
    content = cell_phantom(r.shape, n_cells=r.n_cells, rng=gen)[: len(r.channels)]
    image = through_focus_stack(content, r, rng=gen)
    truth = through_focus_stack(content, r, [0.0], clean=True)[:, 0]
    return {"image": image, "truth": truth, "content": content, "recipe": r}


def write_synthetic_dataset(
    out_path: str | os.PathLike,
    recipe: str | Recipe | dict = "bbbc006-like",
    fields: int = 1,
    seed: int = 0,
    *,
    keep_even: bool | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write ``fields`` synthetic through-focus fields as an OME-Zarr dataset (see module docstring).

    Parameters
    ----------
    out_path : str or PathLike
        Destination folder (``*.zarr``).
    recipe : str, Recipe or dict
        A shipped recipe name (:func:`~napari_linblur.synth.recipes.list_recipes`), a Recipe, or its dict.
    fields : int
        Number of fields (>= 1).
    seed : int
        Dataset seed (>= 0).
    keep_even : bool, optional
        Override the recipe's ``keep_even`` (True: the paper's 9 even planes).
    overwrite : bool
        Replace an existing ``out_path`` (otherwise ``FileExistsError``).
    progress : bool
        Show a tqdm progress bar over fields.

    Returns
    -------
    path : Path

    Examples
    --------
    >>> import tempfile, pathlib
    >>> r = get_recipe("bbbc006-like", shape=(32, 48), keep_even=True)
    >>> p = write_synthetic_dataset(pathlib.Path(tempfile.mkdtemp()) / "d.zarr", r, 2, 0, progress=False)
    >>> sorted(q.name for q in p.iterdir())
    ['field_000', 'field_001', 'zarr.json']
    """
    import zarr

    from ..io.omezarr import write_ome_zarr

    if isinstance(fields, bool) or not isinstance(fields, (int, np.integer)) or fields < 1:
        raise ValueError(f"fields must be an int >= 1, got {fields!r}")
    field_seed(seed, 0)  # validates seed
    base = get_recipe(recipe)
    if keep_even is not None:
        base = base.replace(keep_even=bool(keep_even))
    check_output_name(out_path)
    target = Path(os.fspath(out_path)).resolve()
    check_not_inside_store(target)
    check_replaceable(target)  # first: a file or a foreign folder is refused as such, --overwrite would not help
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise FileExistsError(
            f"{target}: already exists; pass overwrite=True (--overwrite) to replace it"
        )

    root_attrs = {
        "linblur": {
            "kind": "synthetic-through-focus",
            "version": FORMAT_VERSION,
            "recipe": base.to_dict(),
            "seed": int(seed),
            "fields": int(fields),
            "field_names": [f"field_{i:03d}" for i in range(fields)],
            "planes": list(base.planes),
            "plane_defocus_um": None
            if base.randomize is not None
            else [float(v) for v in base.defocus_um],
            "channels": [c.name for c in base.channels],
            "axes": "czyx",
            "truth": "field_XXX/truth: float32 (C, Y, X) noise-free in-focus camera signal (ADU)",
        }
    }
    check_parent_folders(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    warn_stale_partial_writes(target)  # what a killed earlier write of this dataset left behind, as every writer
    tmp = make_temp_sibling(target)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=fields, desc=f"linblur synth {target.name}", unit="field")
    try:
        zarr.create_group(store=str(tmp), zarr_format=3, attributes=root_attrs, overwrite=False)
        for i in range(fields):
            f = synthesize_field(base, seed, i)
            r: Recipe = f["recipe"]
            name = f"field_{i:03d}"
            px = r.optics.pixel_um
            field_attrs = {
                "linblur": {
                    "field": i,
                    "seed": int(seed),
                    "spawn_key": [i],
                    "recipe": r.to_dict(),
                    "planes": list(r.planes),
                    "plane_defocus_um": [float(v) for v in r.defocus_um],
                }
            }
            write_ome_zarr(
                tmp / name,
                f["image"],
                axes="czyx",
                scale=(1.0, r.z_step_um, px, px),
                channel_names=[c.name for c in r.channels],
                attrs=field_attrs,
                pyramid_levels=1,
                name=name,
            )
            write_ome_zarr(
                tmp / name / "truth",
                f["truth"],
                axes="cyx",
                scale=(1.0, px, px),
                channel_names=[c.name for c in r.channels],
                attrs={
                    "linblur": {"field": i, "defocus_um": 0.0, "units": "ADU", "noise_free": True}
                },
                pyramid_levels=1,
                name=f"{name}/truth",
            )
            del f
            if bar is not None:
                bar.update(1)
        move_into_place(tmp, target, overwrite)
    except BaseException as err:
        failed_write(tmp, target, err)
        raise
    finally:
        if bar is not None:
            bar.close()
    return Path(os.fspath(out_path))
