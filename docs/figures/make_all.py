"""Regenerate every figure in docs/ (``make docs-figures``), from the repository root.

The optics, deblurring, defocus figures and the plugin screenshots are rebuilt from the shipped models and seeded
synthetic data. The latent-autoencoder figures compare three training runs (baseline, indirect, direct); they are
rebuilt with the commands quoted in ``docs/results/latent-ae.md`` once those runs exist (pass ``--latent-data`` and
``--latent-model LABEL=PATH`` to rebuild them here).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--latent-data", default=None, help="dataset for docs/figures/latent_figures.py")
    ap.add_argument("--latent-model", action="append", default=[], help="LABEL=PATH for latent_figures.py")
    args = ap.parse_args(argv)
    jobs = [[sys.executable, str(HERE / name)] for name in
            ("optics_figure.py", "deblur_figures.py", "defocus_figures.py", "screenshots.py")]
    if args.latent_data and args.latent_model:
        cmd = [sys.executable, str(HERE / "latent_figures.py"), "--data", args.latent_data]
        for m in args.latent_model:
            cmd += ["--model", m]
        jobs.append(cmd)
    else:
        print("latent figures: see docs/results/latent-ae.md for the training runs and the command that draws them")
    failed = 0
    for cmd in jobs:
        print("+", " ".join(cmd[1:]), flush=True)
        failed += subprocess.call(cmd) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
