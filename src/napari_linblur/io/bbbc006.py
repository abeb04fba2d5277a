"""BBBC006 (Broad Bioimage Benchmark Collection, image set BBBC006v1) file naming and folder layouts.

BBBC006 is 384 wells x 2 sites x 2 channels x 34 focal planes of 696x520 16-bit LZW TIFFs. Two layouts are
accepted (also mixed):

* **per-plane folders** (as distributed): ``BBBC006_v1_images_z_00/`` ... ``BBBC006_v1_images_z_33/``, each
  holding ``mcf-z-stacks-03212011_{well}_s{site}_w{channel}{uuid}.tif``;
* **plane prefix**: one folder of ``{zz}_mcf-z-stacks-03212011_{well}_s{site}_w{channel}{uuid}.tif``.

A folder opens as a lazy dask array with axes ``(P, C, Z, Y, X)`` (``P`` = well/site position, sorted by well
then site; ``C`` = channels ``w1``, ``w2``; ``Z`` = planes sorted by index) or ``(P, Z, Y, X)`` when one channel
is selected. Planes are 2 µm apart (plane 16 is in focus), pixels 0.65 µm.

Examples
--------
>>> from napari_linblur.io.bbbc006 import parse_bbbc006_name
>>> rec = parse_bbbc006_name("07_mcf-z-stacks-03212011_k06_s2_w12667264a-6432-4f7e-bf58-625a1319a1c9.tif")
>>> (rec.well, rec.site, rec.channel, rec.z)
('k06', 2, 'w1', 7)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BBBC006_Z_SPACING_UM",
    "BBBC006_XY_PIXEL_UM",
    "BBBC006_FOCUS_PLANE",
    "BBBCRecord",
    "parse_bbbc006_name",
    "is_bbbc006_name",
    "scan_bbbc006",
    "plane_from_folder",
]

BBBC006_Z_SPACING_UM = 2.0
BBBC006_XY_PIXEL_UM = 0.65
BBBC006_FOCUS_PLANE = 16

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_NAME_RE = re.compile(
    r"^(?:(?P<z>\d{1,3})_)?(?P<plate>[A-Za-z0-9-]+?)_(?P<well>[A-Pa-p]\d{2})_s(?P<site>\d+)"
    rf"_w(?P<channel>\d)(?P<uuid>{_UUID})?\.tiff?$"
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
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in (".tif", ".tiff"):
            yield p
        elif p.is_dir() and plane_from_folder(p) is not None:
            for q in sorted(p.iterdir()):
                if q.is_file() and q.suffix.lower() in (".tif", ".tiff"):
                    yield q


def scan_bbbc006(folder: str | Path) -> list[BBBCRecord]:
    """All BBBC006 images in ``folder`` (plane-prefix files and ``BBBC006_v1_images_z_NN`` sub-folders).

    Returns an empty list when the folder holds no BBBC006-named TIFF (so that callers can fall back to a
    generic folder reader). Files whose plane is unknown raise ``ValueError``; duplicates (same field,
    channel and plane twice) raise ``ValueError`` naming both files.
    """
    folder = Path(folder)
    records: list[BBBCRecord] = []
    seen: dict[tuple[str, str, int], Path] = {}
    for p in _candidate_files(folder):
        if not is_bbbc006_name(p.name):
            continue
        rec = parse_bbbc006_name(p)
        if rec.z is None:
            raise ValueError(
                f"{p}: BBBC006 file without a plane index; put it in a 'BBBC006_v1_images_z_NN' folder "
                "or prefix its name with 'NN_'"
            )
        key = (rec.field, rec.channel, rec.z)
        if key in seen:
            raise ValueError(
                f"{folder}: two files for well/site {rec.field}, channel {rec.channel}, plane {rec.z}: "
                f"{seen[key]} and {p}"
            )
        seen[key] = p
        records.append(rec)
    return records


def _field_sort_key(field: str) -> tuple[str, int, int]:
    well, site = field.split("_s")
    return (well[0], int(well[1:]), int(site))


def organize(records: list[BBBCRecord], folder: str | Path) -> tuple[list[str], list[str], list[int], dict]:
    """Check completeness and return ``(fields, channels, planes, index)``.

    ``index[(field, channel, z)]`` is the record. Every field must have every channel at every plane that
    occurs anywhere in the folder; otherwise a ``ValueError`` lists what is missing.
    """
    fields = sorted({r.field for r in records}, key=_field_sort_key)
    channels = sorted({r.channel for r in records})
    planes = sorted({int(r.z) for r in records if r.z is not None})
    index = {(r.field, r.channel, int(r.z)): r for r in records if r.z is not None}
    missing = [
        f"well {f.split('_s')[0]} site {f.split('_s')[1]} channel {c} plane {z:02d}"
        for f in fields
        for c in channels
        for z in planes
        if (f, c, z) not in index
    ]
    if missing:
        shown = "; ".join(missing[:10]) + (f"; ... ({len(missing)} in all)" if len(missing) > 10 else "")
        raise ValueError(
            f"{folder}: incomplete BBBC006 folder, every well/site needs channels {channels} at planes "
            f"{planes}; missing: {shown}"
        )
    return fields, channels, planes, index
