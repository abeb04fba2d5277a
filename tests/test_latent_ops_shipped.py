"""The shipped ae-default model: card + hash, and its behaviour on an unseen synthetic BBBC006-like field."""

import json
import shutil

import numpy as np
import pytest

import napari_linblur as nl
from napari_linblur.metrics.image import psnr
from napari_linblur.models import registry

pytestmark = pytest.mark.skipif("ae-default" not in registry.list_models(), reason="ae-default not shipped")


@pytest.fixture(scope="module")
def field():
    from napari_linblur.synth.dataset import synthesize_field
    from napari_linblur.synth.recipes import get_recipe

    # a field the model never saw: other seed and size than the training dataset
    f = synthesize_field(get_recipe("bbbc006-like", shape=(192, 224), keep_even=True), seed=987, index=0)
    return f["image"][0].astype(np.float32)  # w1, 9 planes sharpest last: z0 ... z16


def test_card_hash_and_size(tmp_path):
    m = nl.load_model("ae-default", device="cpu")
    card = m.card
    assert card["architecture"] == "LinearLatentAE" and m.task == "ae"
    assert "linblur train ae" in card["training"]["command"] and card["data_command"].startswith("linblur synth")
    assert card["data"]["recipe"]["name"] == "bbbc006-like" and card["sha256"]
    assert "evaluation" in card
    path = registry.WEIGHTS_DIR / "ae-default.safetensors"
    assert path.stat().st_size <= 15 * 2**20
    # a corrupted copy is refused by its sidecar hash
    bad = tmp_path / "ae.safetensors"
    shutil.copy(path, bad)
    shutil.copy(registry.WEIGHTS_DIR / "ae-default.json", tmp_path / "ae.json")
    data = bytearray(bad.read_bytes())
    data[-1] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        nl.load_model(bad, device="cpu")
    assert json.loads((tmp_path / "ae.json").read_text())["sha256"] == card["sha256"]


def test_synthesis_beats_pixel_blending_on_a_wide_triplet(field):
    planes = field[::-1]  # sharpest first: z16, z14, ..., z0
    a, b, c = planes[0], planes[4], planes[8]
    alpha = nl.alpha_from_positions(0.0, 8.0, 16.0)
    syn = nl.synthesize_blur(a, c, alpha, device="cpu")
    rng = float(np.percentile(planes, 99.9) - np.percentile(planes, 0.1))
    blend = alpha * a + (1 - alpha) * c
    assert psnr(b, syn, data_range=rng) > psnr(b, blend, data_range=rng)


def test_deblur_pair_sharpens_towards_focus(field):
    planes = field[::-1]
    a, b, c = planes[0], planes[2], planes[4]
    out = nl.deblur_pair(b, c, 0.5, device="cpu")
    rng = float(np.percentile(planes, 99.9) - np.percentile(planes, 0.1))
    assert out.dtype == np.float32 and out.shape == a.shape
    assert psnr(a, out, data_range=rng) > psnr(a, b, data_range=rng)


def test_auto_alpha_lands_near_the_true_alpha(field):
    from napari_linblur.inference.latent_ops import auto_alpha

    planes = field[::-1]
    est = [auto_alpha(planes[k], planes[2 * k], device="cpu") for k in (1, 2, 3, 4)]
    assert abs(float(np.mean(est)) - 0.5) <= 0.2, est


def test_no_seams_with_the_shipped_model(field):
    # a 2x2 mosaic (384 x 448) so that the default 256-px tiles overlap; compare with one whole-image pass
    a, c = np.tile(field[-1], (2, 2)), np.tile(field[-5], (2, 2))
    whole = nl.synthesize_blur(a, c, 0.5, device="cpu", tile=512)
    tiled = nl.synthesize_blur(a, c, 0.5, device="cpu")  # defaults: tile 256, overlap 64
    inner = (slice(16, -16), slice(16, -16))
    span = float(np.percentile(whole, 99.9) - np.percentile(whole, 0.1))
    assert np.abs(tiled - whole)[inner].max() < 0.01 * span
