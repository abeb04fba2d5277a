"""Speed of the shipped ``deblur-default`` against 10 Richardson-Lucy iterations (issue 5's speed bar).

Runs :func:`napari_linblur.evaluation.deblur.speed_comparison` (1024x1024, interleaved best of 5) twice at 1 and
2 threads, and once each for an optional second model (``--compare``, e.g. the model it replaced), and writes every
result to ``--out`` (JSON, recorded in the model card by ``deblur_export.py --speed``). Run it on a quiet machine.

    python docs/results/deblur_speed.py --out runs/speed_lean.json --compare runs/classic/deblur-classic.safetensors
"""
import argparse
import json
import time

from napari_linblur.evaluation.deblur import speed_comparison as s

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--compare", default=None, help="a second model timed once per thread count")
a = p.parse_args()
runs = []
for rnd in range(2):
    for t in (1, 2):
        r = s("deblur-default", threads=t, repeats=5)
        runs.append({"model": "deblur-default", "threads": t, **r})
        print(runs[-1], flush=True)
    if rnd == 0 and a.compare:
        for t in (1, 2):
            r = s(a.compare, threads=t, repeats=5)
            runs.append({"model": a.compare, "threads": t, **r})
            print(runs[-1], flush=True)
out = {"command": "python docs/results/deblur_speed.py --out " + a.out
                  + (f" --compare {a.compare}" if a.compare else ""),
       "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": runs}
with open(a.out, "w") as f:
    json.dump(out, f, indent=1, default=float)
