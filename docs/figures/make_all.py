"""Regenerate every figure in docs/ (``make docs-figures``), from the repository root.

The optics, deblurring, defocus figures and the plugin screenshots are rebuilt from the shipped models and seeded
synthetic data; the latent-autoencoder figures by ``docs/figures/latent_all.sh``, which makes their dataset and
trains the four short comparison runs of the latent PCA (a few minutes; ``--no-latent`` skips them).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--no-latent", action="store_true", help="skip the latent figures (docs/figures/latent_all.sh)")
    ap.add_argument("--latent-work", default="/tmp/latent_figures", help="scratch folder of latent_all.sh")
    args = ap.parse_args(argv)
    jobs = [[sys.executable, str(HERE / name)] for name in
            ("optics_figure.py", "deblur_figures.py", "defocus_figures.py", "screenshots.py")]
    if not args.no_latent:
        jobs.append(["bash", str(HERE / "latent_all.sh"), args.latent_work])
    failed = 0
    for cmd in jobs:
        print("+", " ".join(cmd[1:]), flush=True)
        # latent_all.sh runs linblur and python from the folder of this interpreter (the .venv of make)
        failed += subprocess.call(cmd, env={**os.environ, "BIN": str(Path(sys.executable).parent)}) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
