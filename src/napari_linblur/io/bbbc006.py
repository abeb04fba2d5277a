"""BBBC006 (Broad Bioimage Benchmark Collection, image set BBBC006v1) file naming and folder layouts.

BBBC006 is 384 wells x 2 sites x 2 channels x 34 focal planes of 696x520 16-bit LZW TIFFs. Two layouts are
accepted (also mixed):

* **per-plane folders** (as distributed): ``BBBC006_v1_images_z_00/`` ... ``BBBC006_v1_images_z_33/``, each
  holding ``mcf-z-stacks-03212011_{well}_s{site}_w{channel}{uuid}.tif``;
* **plane prefix**: one folder of ``{zz}_mcf-z-stacks-03212011_{well}_s{site}_w{channel}{uuid}.tif``.

A folder opens as a lazy dask array with axes ``(P, C, Z, Y, X)`` (``P`` = well/site position, sorted by well
then site; ``C`` = channels ``w1``, ``w2``; ``Z`` = planes sorted by index) or ``(P, Z, Y, X)`` when one channel
is selected. Planes are 2 µm apart (plane 16 is in focus), pixels 0.65 µm.

A plate with holes still opens (:func:`organize`): the channel is chosen first (a missing ``w1`` file never
matters when ``w2`` is read), the stack holds the planes that at least half of the fields have, and a field that
lacks one of them is left out (the reader warns and records it in ``meta.extra['dropped_fields']``), and so is a
field with two files for one plane (``meta.extra['duplicate_fields']``); only a folder in which no field is complete
is an error.

Examples
--------
>>> from napari_linblur.io.bbbc006 import parse_bbbc006_name
>>> rec = parse_bbbc006_name("07_mcf-z-stacks-03212011_k06_s2_w12667264a-6432-4f7e-bf58-625a1319a1c9.tif")
>>> (rec.well, rec.site, rec.channel, rec.z)
('k06', 2, 'w1', 7)
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "BBBC006_Z_SPACING_UM",
    "BBBC006_XY_PIXEL_UM",
    "BBBC006_FOCUS_PLANE",
    "BBBCRecord",
    "parse_bbbc006_name",
    "is_bbbc006_name",
    "scan_bbbc006",
    "other_tiffs",
    "plane_from_folder",
    "PlateLayout",
    "organize",
    "channels_of",
    "planes_text",
    "dropped_message",
    "data_dirs",
    "find_bbbc006_image",
]

BBBC006_Z_SPACING_UM = 2.0
BBBC006_XY_PIXEL_UM = 0.65
BBBC006_FOCUS_PLANE = 16

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_NAME_RE = re.compile(
    r"^(?:(?P<z>\d{1,3})_)?(?P<plate>[A-Za-z0-9-]+?)_(?P<well>[A-Pa-p]\d{2})_s(?P<site>\d+)"
    rf"_w(?P<channel>\d)(?P<uuid>{_UUID})?\.(?i:tiff?)$"  # .tif, .TIF, .tiff ... (cameras and copies differ)
)
_FOLDER_RE = re.compile(r"^BBBC006_v1_images_z_(?P<z>\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class BBBCRecord:
    """One BBBC006 image file: where it is and what it shows.

    Attributes
    ----------
    path : Path
    plate : str
        e.g. ``'mcf-z-stacks-03212011'``.
    well : str
        lower-case well id, e.g. ``'k06'``.
    site : int
    channel : str
        ``'w1'`` (Hoechst, nuclei) or ``'w2'`` (phalloidin, cell structure).
    z : int | None
        focal plane index (0-33) from the name prefix or the ``BBBC006_v1_images_z_NN`` folder; None if
        neither says.
    uuid : str | None
    """

    path: Path
    plate: str
    well: str
    site: int
    channel: str
    z: int | None
    uuid: str | None

    @property
    def field(self) -> str:
        """``'{well}_s{site}'``, the position id used along the P axis."""
        return f"{self.well}_s{self.site}"


def is_tiff_name(name: str) -> bool:
    """A TIFF file's name (``.tif``/``.tiff``, any case), not a hidden file: macOS writes an AppleDouble
    ``._NAME.tif`` beside every file it copies to a USB drive or a network share, which is not an image.

    Examples
    --------
    >>> is_tiff_name("z01.TIF"), is_tiff_name("._z01.tif"), is_tiff_name("z01.png")
    (True, False, False)
    """
    return not name.startswith(".") and Path(name).suffix.lower() in (".tif", ".tiff")


def is_bbbc006_name(name: str) -> bool:
    """True if ``name`` (a file name, no folder) follows the BBBC006 naming."""
    return _NAME_RE.match(name) is not None


def plane_from_folder(folder: str | Path) -> int | None:
    """Plane index of a ``BBBC006_v1_images_z_NN`` folder name, else None."""
    m = _FOLDER_RE.match(Path(folder).name)
    return int(m.group("z")) if m else None


def parse_bbbc006_name(path: str | Path) -> BBBCRecord:
    """Parse a BBBC006 file name (either layout) into a :class:`BBBCRecord`.

    The plane comes from the ``{zz}_`` prefix, else from a parent folder named ``BBBC006_v1_images_z_{zz}``.

    Raises
    ------
    ValueError
        if the name does not follow ``[{zz}_]{plate}_{well}_s{site}_w{channel}{uuid}.tif``, or the prefix and
        the folder disagree on the plane.

    Examples
    --------
    >>> r = parse_bbbc006_name("BBBC006_v1_images_z_05/mcf-z-stacks-03212011_a01_s1_w2.tif")
    >>> (r.field, r.channel, r.z)
    ('a01_s1', 'w2', 5)
    """
    p = Path(path)
    m = _NAME_RE.match(p.name)
    if m is None:
        raise ValueError(
            f"{p}: not a BBBC006 file name; expected "
            "'[zz_]mcf-z-stacks-03212011_{well}_s{site}_w{channel}{uuid}.tif'"
        )
    z_name = int(m.group("z")) if m.group("z") is not None else None
    z_dir = plane_from_folder(p.parent)
    if z_name is not None and z_dir is not None and z_name != z_dir:
        raise ValueError(f"{p}: plane prefix {z_name} disagrees with its folder's plane {z_dir}")
    return BBBCRecord(
        path=p,
        plate=m.group("plate"),
        well=m.group("well").lower(),
        site=int(m.group("site")),
        channel=f"w{m.group('channel')}",
        z=z_name if z_name is not None else z_dir,
        uuid=m.group("uuid"),
    )


def _candidate_files(folder: Path) -> Iterable[Path]:
    """The TIFFs of a BBBC006 folder and its plane sub-folders; a broken symbolic link counts (its header cannot
    be read, so its field is left out with a warning naming it, rather than its plane vanishing without a word)."""

    def tiff(p: Path) -> bool:
        return (p.is_file() or (p.is_symlink() and not p.is_dir())) and is_tiff_name(p.name)

    for p in sorted(folder.iterdir()):
        if tiff(p):
            yield p
        elif p.is_dir() and plane_from_folder(p) is not None:
            for q in sorted(p.iterdir()):
                if tiff(q):
                    yield q


def scan_bbbc006(folder: str | Path) -> list[BBBCRecord]:
    """All BBBC006 images in ``folder`` (plane-prefix files and ``BBBC006_v1_images_z_NN`` sub-folders).

    Returns an empty list when the folder holds no BBBC006-named TIFF (so that callers can fall back to a
    generic folder reader). Files whose plane is unknown raise ``ValueError``. Duplicates (the same field, channel
    and plane twice, e.g. a prefixed copy beside the per-plane folders) are all returned: :func:`organize` leaves
    their field out, naming both files, because there is no telling which one is right.
    """
    folder = Path(folder)
    records: list[BBBCRecord] = []
    for p in _candidate_files(folder):
        if not is_bbbc006_name(p.name):
            continue
        rec = parse_bbbc006_name(p)
        if rec.z is None:
            raise ValueError(
                f"{p}: BBBC006 file without a plane index; put it in a 'BBBC006_v1_images_z_NN' folder "
                "or prefix its name with 'NN_'"
            )
        records.append(rec)
    return records


def other_tiffs(folder: str | Path) -> list[Path]:
    """The TIFF files of a BBBC006 folder (and its plane sub-folders) whose names are not BBBC006 names: left out
    of its stacks, so the reader names them (a stray ``overview.tif``, a renamed plane)."""
    return [p for p in _candidate_files(Path(folder)) if not is_bbbc006_name(p.name)]


def _field_sort_key(field: str) -> tuple[str, int, int]:
    well, site = field.split("_s")
    return (well[0], int(well[1:]), int(site))


def channels_of(records: Iterable[BBBCRecord]) -> list[str]:
    """The channels (``'w1'``, ``'w2'``) that occur among ``records``, sorted."""
    return sorted({r.channel for r in records})


def planes_text(planes: Iterable[int]) -> str:
    """Plane indices as short text, runs joined by a dash.

    Examples
    --------
    >>> planes_text([0, 1, 2, 3, 7, 9, 10])
    'planes 0-3, 7, 9-10'
    >>> planes_text([16])
    'plane 16'
    """
    zs = sorted(set(planes))
    runs: list[list[int]] = []
    for z in zs:
        if runs and z == runs[-1][-1] + 1:
            runs[-1].append(z)
        else:
            runs.append([z])
    text = ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs)
    return ("plane " if len(zs) == 1 else "planes ") + text


@dataclass(frozen=True)
class PlateLayout:
    """What of a BBBC006 folder makes a complete ``(P, C, Z)`` grid of planes, and what was left out.

    Attributes
    ----------
    fields : list of str
        the complete fields (every selected channel at every plane), sorted by well then site: the P axis.
    channels : list of str
        the selected channels: the C axis.
    planes : list of int
        the plane indices along Z: every plane that at least half of the fields hold (in any selected channel).
    index : dict
        ``(field, channel, z) -> BBBCRecord`` for every cell of the grid.
    dropped : dict
        ``field -> {channel: [missing planes]}`` for each field left out because it lacks planes that the other
        fields have.
    left_out_planes : list of int
        planes that fewer than half of the fields hold: not part of the stack, though some complete fields hold
        them.
    duplicated : dict
        ``field -> ['w1 plane 16: a.tif and b.tif', ...]`` for each field left out because it has two files for
        the same channel and plane (of the selected channels).
    """

    fields: list[str]
    channels: list[str]
    planes: list[int]
    index: dict[tuple[str, str, int], BBBCRecord]
    dropped: dict[str, dict[str, list[int]]]
    left_out_planes: list[int]
    duplicated: dict[str, list[str]] = field(default_factory=dict)

    @property
    def dropped_planes(self) -> dict[str, list[int]]:
        """``field -> missing planes`` (of any selected channel) for each dropped field, e.g. ``{'a02_s1': [16]}``."""
        return {f: sorted({z for zs in by_c.values() for z in zs}) for f, by_c in self.dropped.items()}


def _field_text(field: str) -> str:
    well, site = field.split("_s")
    return f"well {well} site {site}"


def _lacks_text(by_channel: dict[str, list[int]]) -> str:
    """``'w1 plane 16 and w2 planes 15-16'``."""
    return " and ".join(f"{c} {planes_text(zs)}" for c, zs in by_channel.items() if zs)


def organize(
    records: list[BBBCRecord], folder: str | Path, channels: Iterable[str] | None = None
) -> PlateLayout:
    """Arrange the ``records`` of a BBBC006 folder into a complete grid of fields x ``channels`` x planes.

    The planes of the stack are those that at least half of the fields hold (a plane that only a few fields have is
    left out, see :attr:`PlateLayout.left_out_planes`). A field that lacks one of these planes in one of the
    selected channels is dropped (:attr:`PlateLayout.dropped`), so that one missing file costs its field only;
    the other channels are not looked at, so a hole in ``w1`` never drops a field when ``channels=['w2']``.

    Parameters
    ----------
    records : list of BBBCRecord
        the folder's files (:func:`scan_bbbc006`).
    folder : str or Path
        for messages.
    channels : iterable of str, optional
        the channels to stack (e.g. ``['w2']``); None: every channel that occurs in ``records``.

    Returns
    -------
    PlateLayout

    Raises
    ------
    ValueError
        if ``records`` is empty, a channel does not occur in the folder, or no field holds every selected channel
        at every plane (the message lists the missing files, and says so when the fields have no plane in common).
    """
    if not records:
        raise ValueError(f"{folder}: no BBBC006 files (named '[zz_]mcf-z-stacks-03212011_{{well}}_s{{site}}"
                         "_w{channel}{uuid}.tif')")
    present = channels_of(records)
    sel = present if channels is None else list(channels)
    unknown = [c for c in sel if c not in present]
    if unknown or not sel:
        raise ValueError(f"{folder}: no BBBC006 files of channel(s) {unknown or sel}; the folder holds channels "
                         f"{present}")
    fields = sorted({r.field for r in records}, key=_field_sort_key)
    index: dict[tuple[str, str, int], BBBCRecord] = {}
    duplicated: dict[str, list[str]] = {}
    for r in records:
        if r.channel not in sel or r.z is None:
            continue
        key = (r.field, r.channel, int(r.z))
        if key in index:  # two files for one plane: no telling which is right, so the field is left out
            duplicated.setdefault(r.field, []).append(
                f"{r.channel} plane {int(r.z):02d}: {index[key].path} and {r.path}")
        else:
            index[key] = r
    held: dict[str, set[int]] = {f: set() for f in fields}  # planes a field holds in any selected channel
    for f, _, z in index:
        held[f].add(z)
    counts: dict[int, int] = {}
    for zs in held.values():
        for z in zs:
            counts[z] = counts.get(z, 0) + 1
    planes = sorted(z for z, n in counts.items() if 2 * n >= len(fields))
    missing = {f: {c: [z for z in planes if (f, c, z) not in index] for c in sel} for f in fields}
    complete = [f for f in fields if planes and not any(missing[f].values()) and f not in duplicated]
    if not complete:
        if duplicated and all(planes and not any(missing[f].values()) for f in fields):
            raise ValueError(f"{folder}: every well/site field has two files for one plane, so none can be read: "
                             + _duplicates_text(duplicated) + "; remove or move the copies")
        message = _no_complete_field(folder, fields, sel, planes, missing, held)
        raise ValueError(message + (f"; and two files for one plane: {_duplicates_text(duplicated)}"
                                    if duplicated else ""))
    keep, stacked = set(complete), set(planes)
    dropped = {f: {c: zs for c, zs in missing[f].items() if zs} for f in fields
               if f not in keep and any(missing[f].values())}
    left_out = sorted({z for f in complete for z in held[f]} - stacked)
    grid = {k: r for k, r in index.items() if k[0] in keep and k[2] in stacked}
    return PlateLayout(complete, sel, planes, grid, dropped, left_out, duplicated)


def _duplicates_text(duplicated: dict[str, list[str]], limit: int = 5) -> str:
    """``'a02_s1 w1 plane 16: x.tif and y.tif; ...'`` for at most ``limit`` fields."""
    items = [f"{f} {'; '.join(d)}" for f, d in list(duplicated.items())[:limit]]
    more = f"; ... ({len(duplicated)} fields in all)" if len(duplicated) > limit else ""
    return "; ".join(items) + more


def _no_complete_field(folder: str | Path, fields: list[str], channels: list[str], planes: list[int],
                       missing: dict[str, dict[str, list[int]]], held: dict[str, set[int]]) -> str:
    """The message for a folder in which no field is complete: what is missing, and whether any plane is common."""
    common = set.intersection(*(held[f] for f in fields)) if fields else set()
    shared = ""
    if not common:
        shown_fields = "; ".join(f"{f}: {planes_text(held[f]) if held[f] else 'none'}" for f in fields[:6])
        shared = (f"; the well/site fields have no plane in common ({shown_fields}"
                  + (f"; ... {len(fields)} fields in all" if len(fields) > 6 else "") + ")")
    lacking = [
        f"{_field_text(f)} channel {c} plane {z:02d}"
        for f in fields
        for c in channels
        for z in missing[f][c]
    ]
    if not lacking:  # no plane that half of the fields hold
        return f"{folder}: incomplete BBBC006 folder{shared}"
    shown = "; ".join(lacking[:10]) + (f"; ... ({len(lacking)} in all)" if len(lacking) > 10 else "")
    return (f"{folder}: incomplete BBBC006 folder, every well/site needs channels {channels} at planes {planes}; "
            f"missing: {shown}; no well/site has them all{shared}")


def dropped_message(folder: str | Path, layout: PlateLayout, limit: int = 20) -> str | None:
    """The warning for the fields :func:`organize` dropped (and the planes it left out), or None when it dropped
    nothing."""
    parts = []
    if layout.dropped:
        n = len(layout.dropped) + len(layout.fields)
        items = [f"{f} lacks {_lacks_text(by_c)}" for f, by_c in list(layout.dropped.items())[:limit]]
        more = f"; ... ({len(layout.dropped)} in all)" if len(layout.dropped) > limit else ""
        parts.append(f"{len(layout.dropped)} of {n} well/site fields left out, they lack planes that the other "
                     f"fields have: {'; '.join(items)}{more}. The {len(layout.fields)} complete fields are read "
                     "(meta.extra['dropped_fields'] lists the missing planes)")
    if layout.duplicated:
        parts.append(f"{len(layout.duplicated)} well/site field(s) left out, they have two files for one plane: "
                     f"{_duplicates_text(layout.duplicated)} (meta.extra['duplicate_fields'])")
    if layout.left_out_planes:
        parts.append(f"{planes_text(layout.left_out_planes)} left out of every stack: fewer than half of the "
                     "well/site fields hold them (meta.extra['left_out_planes'])")
    return f"{folder}: " + "; ".join(parts) if parts else None


def data_dirs() -> list[Path]:
    """Folders searched for the BBBC006 sample image, in order: ``$NAPARI_LINBLUR_DATA``, then, in a source
    checkout (a ``pyproject.toml`` at the repository root), ``shared/data`` beside and inside the repository.
    An installed package (wheel) has no checkout: only the environment variable is searched."""
    dirs = []
    env = os.environ.get("NAPARI_LINBLUR_DATA")
    if env:
        dirs.append(Path(env).expanduser())
    root = Path(__file__).resolve().parents[3]  # src/napari_linblur/io/bbbc006.py -> the repository root
    if (root / "pyproject.toml").is_file():
        dirs += [root.parent / "shared" / "data", root / "shared" / "data"]
    out: list[Path] = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def find_bbbc006_image() -> Path:
    """Path of the BBBC006 sample image (the first BBBC006-named TIFF in :func:`data_dirs`).

    Raises
    ------
    FileNotFoundError
        None is found: names the folders searched and how to point to one.
    """
    searched = data_dirs()
    for d in searched:
        if d.is_dir():
            hits = sorted(p for p in d.iterdir() if p.suffix.lower() in (".tif", ".tiff") and is_bbbc006_name(p.name))
            if hits:
                return hits[0]
    where = ("looked in " + ", ".join(str(d) for d in searched)) if searched else "no folder to look in"
    raise FileNotFoundError(
        f"BBBC006 sample image not found; {where}. Download an image of BBBC006v1 "
        "(https://bbbc.broadinstitute.org/BBBC006) and set NAPARI_LINBLUR_DATA to its folder."
    )
