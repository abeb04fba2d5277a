"""Export a trained deblurring run as the shipped ``deblur-default`` (weights + model card with sha256).

Uses ``training.deblur.export_default`` (``models.registry.save_model``). The card records the exact training
commands of every stage (``stages``, read from each run's card), the evaluation summary (``metrics``) and the
sha256 of the ``ae-default`` used by the stage-2 feature loss.

    python docs/results/deblur_export.py --model runs/deblur-lean-s2b/model.safetensors \
        --runs stage1=runs/deblur-lean-s1 stage1b=runs/deblur-lean-s1b stage2=runs/deblur-lean-s2b \
        --eval runs/eval_lean2/deblur_eval.json --speed runs/speed_lean.json \
        --feature-ae-sha256 2acd1d7146792b504bb3d0eb6b4e6a23909ae26634bbad6afb9b954bdeb85d83

(the command of the shipped model is in docs/results/deblur.md, section "psnr loss, more content, larger patches").

``--continues MODEL`` (a shipped name or a ``.safetensors`` path) is for runs that continued a shipped model: the card's
``legs_in_order`` starts with that model's legs (its card's ``legs_in_order``) and ``training_minutes_total`` adds its
total, so the card lists and times the whole chain from the first leg.

``--stage1-init`` records the run that the stage-1 run was itself initialised from (card key ``stage1_init``:
its exact command, steps, seed, time and validation), so that the card holds the commands of every stage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "src/napari_linblur/models/weights"


def _metrics(ev: dict, main: str) -> dict:
    """The card's ``metrics``: the evaluated model's rows (no ablations), the bars and the speed."""

    def keep(row: dict) -> dict:
        drop = set(ev.get("models", [])) - {main} | {"network fp32", "reblur-extrapolate (true σ)", "guided (true map)"}
        return {k: v for k, v in row.items() if k not in drop}

    return {
        "bars": ev["bars"],
        "command": ev["command"],
        "n_per_condition": ev["n"],
        "psnr_db": {
            "captured": keep(ev["captured"]),
            "focus": {d: keep(r) for d, r in ev["focus"].items()},
            "varying": keep(ev["varying"]),
        },
        "side": ev["side"],
        "speed": ev.get("speed"),
        "test_seed": ev["seed"],
    }


def main() -> None:
    from napari_linblur.training.deblur import export_default

    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="the final run's model.safetensors")
    p.add_argument("--runs", nargs="+", default=[], metavar="NAME=RUN_DIR", help="the runs that led to it, in order")
    p.add_argument("--stage1-init", default=None, help="run dir the stage-1 run was initialised from (--init)")
    p.add_argument("--continues", default=None, metavar="MODEL",
                   help="the shipped model (name or .safetensors; read before it is replaced) the first run "
                   "continued: its legs and minutes start the card's legs_in_order and training_minutes_total")
    p.add_argument("--eval", required=True, help="deblur_eval.json of `linblur evaluate deblur`")
    p.add_argument("--out", default=str(WEIGHTS / "deblur-default.safetensors"))
    p.add_argument("--feature-ae-sha256", default=None,
                   help="sha256 of the autoencoder stage 2 was trained with, when ae-default has since been "
                   "replaced (default: the shipped ae-default's)")
    p.add_argument("--eval-more", nargs="*", default=[], metavar="NAME=JSON",
                   help="more deblur_eval.json files (e.g. a larger test set) recorded as metrics['more'][NAME]")
    p.add_argument("--speed", default=None,
                   help="JSON of evaluation.deblur.speed_comparison runs to record as metrics.speed (when the "
                   "evaluation ran with --no-speed): {'command': ..., 'runs': [...]}")
    a = p.parse_args()
    runs = {}
    for item in a.runs:
        name, run = item.split("=", 1)
        runs[name] = str(Path(run) / "model.safetensors")
    ev = json.loads(Path(a.eval).read_text())
    ae = WEIGHTS / "ae-default.safetensors"
    extra = {"feature_ae_sha256": a.feature_ae_sha256 or hashlib.sha256(ae.read_bytes()).hexdigest()}
    if a.stage1_init:
        from napari_linblur.models.registry import read_card

        c = read_card(str(Path(a.stage1_init) / "model.safetensors"))
        extra["stage1_init"] = {"training": c.get("training"), "validation": c.get("validation"),
                                "stage": c.get("stage"), "init": c.get("init"), "loss": c.get("loss"),
                                "data_seed": c.get("data", {}).get("seed")}
    metrics = _metrics(ev, ev.get("main", "network"))
    if a.speed:
        metrics["speed"] = json.loads(Path(a.speed).read_text())
    for item in a.eval_more:
        name, path = item.split("=", 1)
        more = json.loads(Path(path).read_text())
        metrics.setdefault("more", {})[name] = _metrics(more, more.get("main", "network"))
    path = export_default(a.model, a.out, runs=runs, metrics=metrics, extra=extra, continues=a.continues)
    card = json.loads(Path(path).with_suffix(".json").read_text())
    print(f"wrote {path} (sha256 {card.get('sha256')})")


if __name__ == "__main__":
    main()
