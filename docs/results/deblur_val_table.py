"""The validation table of docs/results/deblur.md: every candidate of the PSNR-loss round on the validation set.

Reads ``docs/results/deblur_psnr/val_*.json`` (each from ``linblur evaluate deblur --model RUN --n 128 --seed
3000000 --no-speed --no-reblur``) and prints, per candidate, the network's PSNR and its gain over the better
true-PSF baseline per depth and on spatially varying blur, and its PSNR on captured-style pairs.

    python docs/results/deblur_val_table.py val_s1Q val_s1R96 val_s2R96
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent / "deblur_psnr"


def row(name: str) -> str:
    d = json.loads((HERE / f"{name}.json").read_text())
    f = d["focus"]
    cells = []
    for r in f.values():
        base = max(r["wiener (true PSF)"], r["richardson-lucy (true PSF)"])
        cells.append(f"{r['network']:.2f} ({r['network'] - base:+.2f})")
    v = d["varying"]
    vb = max(v["wiener (true PSF)"], v["richardson-lucy (true PSF)"])
    return (f"| {name.removeprefix('val_')} | " + " | ".join(cells)
            + f" | {v['network']:.2f} ({v['network'] - vb:+.2f}) | {d['captured']['network']:.2f} |")


if __name__ == "__main__":
    names = sys.argv[1:] or sorted(p.stem for p in HERE.glob("val_*.json"))
    print("| candidate | 1 µm | 2 µm | 4 µm | 6 µm | 8 µm | spatially varying | captured-style |")
    print("|---|---|---|---|---|---|---|---|")
    for n in names:
        print(row(n))
