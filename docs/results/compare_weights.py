"""Compare two weight files tensor by tensor: are they bit-identical, and where do they differ most?

Used to check that a re-run of a training recipe reproduces shipped weights (docs/results/defocus.md,
"Reproducing the shipped model from nothing"). Reads safetensors only.

    python docs/results/compare_weights.py runs/repro-5/model.safetensors defocus-default [--json OUT]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _path(name: str) -> Path:
    p = Path(name)
    if p.exists():
        return p
    from napari_linblur.models.registry import model_file

    return model_file(name)


def compare(a: str, b: str, top: int = 5) -> dict:
    """Per-tensor maximum absolute difference of two safetensors files with the same tensor names."""
    from safetensors.numpy import load_file

    wa, wb = load_file(_path(a)), load_file(_path(b))
    if set(wa) != set(wb):
        raise ValueError(f"the two files hold different tensors: only in {a}: {sorted(set(wa) - set(wb))[:5]}, "
                         f"only in {b}: {sorted(set(wb) - set(wa))[:5]}")
    diff = {k: float(np.abs(wa[k].astype(np.float64) - wb[k].astype(np.float64)).max()) if wa[k].size else 0.0
            for k in sorted(wa)}
    worst = sorted(diff.items(), key=lambda kv: -kv[1])[:top]
    return {"a": a, "b": b, "tensors": len(diff), "identical_tensors": sum(v == 0 for v in diff.values()),
            "bit_identical": all(np.array_equal(wa[k], wb[k]) for k in wa), "max_abs_diff": max(diff.values()),
            "largest": worst}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="a .safetensors path or a shipped model name")
    ap.add_argument("b", help="a .safetensors path or a shipped model name")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    res = compare(args.a, args.b)
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
