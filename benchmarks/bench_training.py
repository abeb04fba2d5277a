"""Training step time of the three ``default`` models: fp32 vs bf16 autocast, on the CPU.

One optimizer step = the task's own loss (``training.ae``, ``training.deblur``, ``training.defocus``) on one batch
of its real training shape, backward, AdamW step — what ``training.loop.train`` does per step, without the data
generation (timed separately: it does not depend on the precision). Reported as the bf16 / fp32 time ratio
measured in the same run, interleaved, best of ``repeat``, on one CPU thread (as the shipped models were trained).
"""

from __future__ import annotations

from _timing import best_times


def _ae_case():
    import torch

    from napari_linblur.models.autoencoder import LinearLatentAE
    from napari_linblur.training.ae import triplet_loss

    torch.manual_seed(0)
    model = LinearLatentAE(config="default")
    # the shipped recipe: batch 8 triplets of 96² crops, direct term (absolute, no detach), extrapolation term 4
    batch = {"x": torch.rand(8, 3, 1, 96, 96), "alpha": torch.full((8,), 0.5)}

    def loss(m, b):
        return triplet_loss(m, b, reg="direct", detach=False, direct_scale="absolute", extrap_weight=4.0)

    return "ae-default (8 triplets, 96²)", model, loss, batch


def _deblur_case():
    from napari_linblur.training.deblur import DeblurTask

    task = DeblurTask(stage=1, config="default", seed=0)
    return "deblur-default (8 pairs, 64²)", task.build_model(), task.loss, task.batch(0)


def _defocus_case():
    from napari_linblur.models.hrnet import preset_config
    from napari_linblur.training.defocus import DefocusDataConfig, DefocusTask

    data = DefocusDataConfig(crop=96, render_size=128, batch_size=8, pool_size=0)
    task = DefocusTask(preset_config("default"), data, seed=0)
    return "defocus-default (8 crops, 96²)", task.build_model(), task.loss, task.batch(0)


def step_times(cases=None, repeat: int = 4) -> list[dict]:
    """fp32 and bf16 seconds per optimizer step for each case, interleaved; best of ``repeat``."""
    import torch

    from napari_linblur.inference.device import autocast_context

    dev = torch.device("cpu")
    rows = []
    for make in cases or (_ae_case, _deblur_case, _defocus_case):
        name, model, loss_fn, batch = make()
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

        def step(amp, model=model, loss_fn=loss_fn, batch=batch, opt=opt):
            opt.zero_grad(set_to_none=True)
            with autocast_context(dev, amp):
                loss, _ = loss_fn(model, batch)
            loss.backward()
            opt.step()

        t, _ = best_times({amp: (lambda amp=amp: step(amp)) for amp in ("off", "bf16")}, repeat)
        rows.append({"model": name, "fp32_s_per_step": t["off"], "bf16_s_per_step": t["bf16"],
                     "bf16_over_fp32": t["bf16"] / t["off"]})
    return rows


def run(report) -> None:
    import torch

    torch.set_num_threads(1)
    report("training step (loss + backward + AdamW), fp32 vs bf16 autocast, 1 CPU thread", step_times())
