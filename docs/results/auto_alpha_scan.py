"""Automatic α (``deblur_pair(alpha=None)``) against its noise-guard factor, on the fields of a ``linblur synth`` split.

For every field, the (z_k, z_2k) pairs (k = 1..4; true α = 0.5) are deblurred with ``auto_alpha(...,
noise_factor=f)`` for each factor ``f``, as ``linblur evaluate ae`` scores them (field-stack units, ``data_range=1``).

    python docs/results/auto_alpha_scan.py --data /tmp/ae_data/synth50.zarr --split val --model ae-default \\
        --noise-factors 1.5 2 3 4 --json docs/results/ae_eval_s18/auto_alpha_scan.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="val", choices=["val", "test", "train"])
    p.add_argument("--model", action="append", required=True)
    p.add_argument("--noise-factors", type=float, nargs="+", default=[1.5, 2.0, 3.0, 4.0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", required=True)
    args = p.parse_args()

    import torch

    from napari_linblur.evaluation.ae import _as_called
    from napari_linblur.inference.latent_ops import alpha_from_positions, auto_alpha
    from napari_linblur.inference.normalize import fit_normalization
    from napari_linblur.metrics.image import psnr
    from napari_linblur.models.registry import load_model
    from napari_linblur.training.ae import count_fields, load_fields, split_fields

    torch.set_num_threads(args.threads)
    idx = [int(i) for i in split_fields(count_fields(args.data), 0)[args.split]]
    fields = load_fields(args.data, "w1", fields=idx).fields
    out = {"command": "python docs/results/auto_alpha_scan.py " + " ".join(
        [f"--data {args.data}", f"--split {args.split}", *[f"--model {m}" for m in args.model],
         "--noise-factors " + " ".join(f"{f:g}" for f in args.noise_factors), f"--json {args.json}"]), "rows": []}
    for name in args.model:
        net = load_model(name, device="cpu")
        for nf in args.noise_factors:
            got = []
            for f in fields:
                norm = fit_normalization(*list(f.planes))
                planes = np.stack([norm.apply(q) for q in f.planes])
                d = f.defocus_um
                for k in range(1, (len(planes) - 1) // 2 + 1):
                    true = alpha_from_positions(d[0], d[k], d[2 * k])
                    a = auto_alpha(planes[k], planes[2 * k], model=net, device="cpu", noise_factor=nf)
                    res = _as_called(net, planes[k], planes[2 * k], 1 / a, -(1 - a) / a)
                    got.append((k, true, a, psnr(planes[0], res, data_range=1.0)))
            row = {"model": name, "sha256": net.card.get("sha256"), "noise_factor": nf,
                   "psnr": float(np.mean([g[3] for g in got])), "alpha_mean": float(np.mean([g[2] for g in got])),
                   "alpha_mae": float(np.mean([abs(g[2] - g[1]) for g in got])),
                   "psnr_by_k": {int(k): float(np.mean([g[3] for g in got if g[0] == k])) for k in {g[0] for g in got}}}
            out["rows"].append(row)
            print(f"{name} noise_factor {nf:g}: {row['psnr']:.2f} dB, mean alpha {row['alpha_mean']:.3f}", flush=True)
    with open(args.json, "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
