"""Tile seams and tile sizes of the deblurring and defocus networks (docs/results/defocus.md, "Tile overlap and tile
size (session 15)").

    python docs/results/defocus_tiling.py --json docs/results/defocus_tiling.json     # about 3 min on one thread

1. Seams: the maps of the automatic tiling (and of the tiling before session 15: tiles of at most 544 px at 32 px
   overlap) against one whole-plane tile, on ``bbbc006-like`` planes (w1, 16 µm out); max |difference| in px of σ, and
   for the deblurring network in % of the 0.1-99.9 percentile intensity span.
2. Speed on a 1024² plane, one thread, interleaved best of 3: the former 2 x 2 tiles of 528 px at 32 px overlap,
   2 x 2 tiles of 576 px at 128 px overlap, and one whole tile, in float32 and bf16.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _plane(shape):
    from napari_linblur.synth.dataset import synthesize_field
    from napari_linblur.synth.recipes import get_recipe

    return synthesize_field(get_recipe("bbbc006-like", keep_even=True, shape=shape), 0, 0)["image"][0, 4].astype(
        np.float32)


def seams() -> list[dict]:
    import napari_linblur as nl
    from napari_linblur.inference.tiling import auto_tile

    rows = []
    for shape in ((520, 696), (1096, 304)):  # multiples of 8: the whole-plane run needs no padding
        img = _plane(shape)
        whole = dict(tile=max(shape), overlap=0, amp="off", device="cpu")
        old = dict(tile=auto_tile(*shape, overlap=32, cap=544), overlap=32, amp="off", device="cpu")
        new = dict(amp="off", device="cpu")
        ref = nl.estimate_defocus(img, **whole)
        dref = nl.deblur(img, method="network", **whole)
        span = float(np.percentile(dref, 99.9) - np.percentile(dref, 0.1))
        for label, kw in (("before session 15", old), ("automatic now", new)):
            rows.append({
                "plane": f"{shape[0]}x{shape[1]}", "tiling": label, "tile": kw.get("tile", "auto"),
                "defocus_max_px": float(np.abs(nl.estimate_defocus(img, **kw) - ref).max()),
                "deblur_max_pct_span": 100 * float(np.abs(nl.deblur(img, method="network", **kw) - dref).max()) / span,
            })
    return rows


def speed() -> list[dict]:
    import torch

    import napari_linblur as nl

    torch.set_num_threads(1)
    img = _plane((1024, 1024))
    configs = [(528, 32), (576, 128), (1024, 0)]
    rows = []
    for amp in ("off", "bf16"):
        for name, fn in (
            ("defocus", lambda c, a=amp: nl.estimate_defocus(img, tile=c[0], overlap=c[1], device="cpu", amp=a)),
            ("deblur", lambda c, a=amp: nl.deblur(img, method="network", tile=c[0], overlap=c[1], device="cpu", amp=a)),
        ):
            best = {c: float("inf") for c in configs}
            for _ in range(3):
                for c in configs:
                    t0 = time.perf_counter()
                    fn(c)
                    best[c] = min(best[c], time.perf_counter() - t0)
            for c in configs:
                rows.append({"network": name, "amp": amp, "tile": c[0], "overlap": c[1], "seconds": round(best[c], 3),
                             "relative_to_528_32": round(best[c] / best[configs[0]], 3)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    out = {"seams": seams(), "speed": speed()}
    for r in out["seams"]:
        print(r)
    for r in out["speed"]:
        print(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
