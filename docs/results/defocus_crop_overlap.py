"""How much the validation runs' pixel-shuffled images overlap the test sets' (issue 4, session 22).

``linblur evaluate defocus --seed S`` crops its pixel-shuffled images from the held-out pictures ``coins`` and
``cell`` in turn (``evaluation.defocus.heldout_images``). The validation seeds that chose the shipped models and the
test seeds crop the same two pictures; this prints, for each validation seed, the mean fraction of a test crop's
area that the validation crop of the same index covers (the crops' positions exactly as ``heldout_images`` draws
them: the first draws of ``default_rng([seed, 2, i])``).

    python docs/results/defocus_crop_overlap.py                  # a second
"""

from __future__ import annotations

import argparse

import numpy as np


def crop_origin(seed: int, i: int, shape: tuple[int, int], size: int) -> tuple[int, int]:
    """Top-left corner of image ``i``'s crop, as ``training.defocus._crop`` draws it in ``heldout_images``."""
    rng = np.random.default_rng([seed, 2, i])
    return int(rng.integers(0, shape[0] - size + 1)), int(rng.integers(0, shape[1] - size + 1))


def main() -> None:
    from napari_linblur.training.defocus import HELDOUT_SOURCES, _natural

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--validation", type=int, nargs="+", default=[777, 778, 779, 780])
    p.add_argument("--test", type=int, nargs="+", default=[20240, 31337])
    p.add_argument("--n-images", type=int, default=16)
    p.add_argument("--size", type=int, default=192)
    a = p.parse_args()
    shapes = {name: _natural(name).shape for name in HELDOUT_SOURCES}
    print("| validation seed | test seed | " + " | ".join(f"mean overlap, `{n}` crops" for n in HELDOUT_SOURCES) + " |")
    print("|---|---|" + "---|" * len(HELDOUT_SOURCES))
    for val in a.validation:
        for test in a.test:
            cells = []
            for k, name in enumerate(HELDOUT_SOURCES):
                fractions = []
                for i in range(k, a.n_images, len(HELDOUT_SOURCES)):
                    (y0, x0), (y1, x1) = (crop_origin(s, i, shapes[name], a.size) for s in (val, test))
                    fractions.append(max(0, a.size - abs(y0 - y1)) * max(0, a.size - abs(x0 - x1)) / a.size**2)
                cells.append(f"{np.mean(fractions):.2f}")
            print(f"| {val} | {test} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
