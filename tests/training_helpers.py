"""Helpers shared by the training test modules."""

import json


def edit_recorded_card(ckpt, edit):
    """Rewrite the task card recorded in a checkpoint with ``edit(card)`` (a card of an earlier version)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(ckpt), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    card = json.loads(meta["card"])
    edit(card)
    meta["card"] = json.dumps(card)
    save_file(tensors, str(ckpt), metadata=meta)
