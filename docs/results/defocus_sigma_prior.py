"""How often each σ occurs in the defocus training maps vs the held-out test maps (docs/results/defocus.md).

The training maps of ``linblur train defocus`` span a random sub-range of [0, 10] px by default (so that nearly
uniform, whole-plane blur occurs); ``--full-range P`` makes a fraction P span the whole range, as the held-out maps
of ``linblur evaluate defocus`` (and paper 001's maps) do. This prints the fraction of pixels per 1-px bin of σ.

    python docs/results/defocus_sigma_prior.py --out docs/results/defocus_sigma_prior.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    from napari_linblur.evaluation.defocus import EvalConfig, _eval_map
    from napari_linblur.training.defocus import random_defocus_map

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=300, help="training maps per setting (128²)")
    p.add_argument("--out", default=None, help="JSON of the histograms")
    a = p.parse_args()
    bins = np.arange(11)
    rows: dict[str, list[float]] = {}
    for fr in (0.0, 0.75, 1.0):
        h = np.zeros(10)
        for i in range(a.n):
            h += np.histogram(random_defocus_map(128, np.random.default_rng([5, i]), (0.0, 10.0), full_range=fr),
                              bins=bins)[0]
        rows[f"training, full_range {fr:g}"] = (h / h.sum()).tolist()
    cfg = EvalConfig()
    h = np.zeros(10)
    for i in range(40):  # the held-out maps: same recipe as linblur evaluate defocus, other seeds
        h += np.histogram(_eval_map(cfg.size, np.random.default_rng([cfg.seed + 1, 9, i]), i), bins=bins)[0]
    rows["held-out maps (evaluate defocus)"] = (h / h.sum()).tolist()
    print("| maps | " + " | ".join(f"{lo}–{lo + 1}" for lo in range(10)) + " |")
    print("|---|" + "---|" * 10)
    for k, v in rows.items():
        print(f"| {k} | " + " | ".join(f"{x:.3f}" for x in v) + " |")
    if a.out:
        Path(a.out).write_text(json.dumps({"bins_px": bins.tolist(), "fractions": rows, "n": a.n,
                                           "command": "python docs/results/defocus_sigma_prior.py"
                                           + (f" --n {a.n}" if a.n != 300 else "")}, indent=2) + "\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
