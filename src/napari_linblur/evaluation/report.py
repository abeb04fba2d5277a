"""Writing an evaluation's two reports: the JSON of every number and the Markdown tables, one file each."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_reports(out: str | Path, stem: str, res: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``OUT/STEM.json`` (``res``, strict JSON) and ``OUT/STEM.md`` (``markdown`` and, last, the command that
    made them), each atomically.

    The Markdown ends with ``res["command"]`` so that the two files of a folder can be told to belong to one run
    (a run killed between the two writes leaves the new JSON beside an earlier Markdown).

    Returns
    -------
    (Path, Path)
        The JSON and Markdown files.

    Examples
    --------
    >>> import tempfile
    >>> js, md = write_reports(tempfile.mkdtemp(), "x_eval", {"command": "linblur evaluate x --seed 7"}, "| a |")
    >>> md.read_text().splitlines()[-1]
    'Command: `linblur evaluate x --seed 7`'
    """
    from napari_linblur.io.atomic import write_json_atomic, write_text_atomic

    out = Path(out)
    made = []  # the folders this call creates, deepest first: removed again if nothing could be written
    p = out
    while not p.exists() and p != p.parent:
        made.append(p)
        p = p.parent
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / f"{stem}.json", out / f"{stem}.md"
    try:
        write_json_atomic(js, res)
        command = res.get("command")
        write_text_atomic(md, markdown.rstrip("\n") + "\n" + (f"\nCommand: `{command}`\n" if command else ""))
    except BaseException:
        for folder in made:  # folders this call made and nothing was written to (a full disk): not left behind
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return js, md
