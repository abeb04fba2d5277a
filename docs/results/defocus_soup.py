"""Weight averages ("model soups") of defocus models fine-tuned from the same parent (docs/results/defocus.md).

Averages the floating-point weights of the given models key by key (integer buffers come from the last model),
re-estimates the BatchNorm statistics over ``--bn-batches`` batches of the last model's training recipe
(:func:`napari_linblur.training.defocus.recalibrate_batchnorm`) and saves the result with the last model's card
plus a ``soup`` entry. The models must share one architecture and configuration.

    python docs/results/defocus_soup.py runs/soupU/model.safetensors C2.safetensors defocus-default

(C2 = the model shipped at commit 6e97eae:
``git show 6e97eae:src/napari_linblur/models/weights/defocus-default.safetensors``; the parent a1c1422f is the one
at 1c3180d.)
"""

from __future__ import annotations

import argparse


def main() -> None:
    import torch

    from napari_linblur.models.registry import load_model, save_model
    from napari_linblur.training.defocus import (
        DefocusDataConfig,
        DefocusTask,
        card_recipe,
        recalibrate_batchnorm,
    )

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", help="output .safetensors")
    p.add_argument("models", nargs="+", help="two or more shipped names or .safetensors paths")
    p.add_argument("--bn-batches", type=int, default=64)
    p.add_argument("--seed", type=int, default=8, help="seed of the BatchNorm batches (the last model's leg: 8)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    if len(a.models) < 2:
        p.error("give at least two models to average")
    torch.set_num_threads(a.threads)
    models = [load_model(m, device="cpu") for m in a.models]
    base = models[-1]
    avg = {k: (sum(m.state_dict()[k].float() for m in models) / len(models)) if v.is_floating_point() else v
           for k, v in base.state_dict().items()}
    base.load_state_dict(avg)
    data = DefocusDataConfig(**{**card_recipe(a.models[-1]), "batch_size": 8, "crop": 96, "render_size": 128,
                                "pool_size": 512})
    n = recalibrate_batchnorm(base, DefocusTask(base.card["config"], data, seed=a.seed), a.bn_batches)
    base.eval()
    card = dict(base.card, soup={"sources": a.models, "bn_recalibration_batches": a.bn_batches, "bn_layers": n})
    print("saved", save_model(base, a.out, card))


if __name__ == "__main__":
    main()
