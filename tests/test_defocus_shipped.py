"""The SHIPPED defocus-default model: card, through-focus monotonicity, best focus, real BBBC006 plane 0."""

import glob
import json

import numpy as np
import pytest
from scipy.stats import spearmanr

import napari_linblur as nl
from napari_linblur.inference.defocus_ops import signal_mask
from napari_linblur.models.registry import WEIGHTS_DIR, list_models, sha256_file

pytestmark = pytest.mark.skipif("defocus-default" not in list_models(), reason="defocus-default not shipped")

BBBC006 = sorted(glob.glob("/work/shared/data/*.tif"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_card_and_file():
    path = WEIGHTS_DIR / "defocus-default.safetensors"
    card = json.loads((WEIGHTS_DIR / "defocus-default.json").read_text())
    assert path.stat().st_size <= 15e6
    assert card["sha256"] == sha256_file(path)
    assert card["architecture"] == "HDMENet" and card["task"] == "defocus"
    assert "linblur train defocus" in card["training"]["command"]
    assert card["data"]["recipe"]["content"] in ("mixed", "shuffle", "phantom") and "seed" in card["data"]
    assert "metrics" in card and card["metrics"]


@pytest.fixture(scope="module")
def vectorial_stack():
    from napari_linblur.optics.psf import OpticalSetup
    from napari_linblur.synth.phantoms import cell_phantom
    from napari_linblur.synth.zstack import through_focus_stack

    setup = OpticalSetup(na=0.45, wavelength_um=0.52, pixel_um=0.65, model="born_wolf", vectorial=True)
    content = cell_phantom((96, 96), n_cells=4, rng=3)[0]
    dz = np.arange(-12.0, 12.1, 3.0)  # 9 planes, plane 4 in focus
    return dz, through_focus_stack(content, setup, dz, rng=4, photons=1000.0)


def test_sigma_rises_with_defocus_and_best_focus(vectorial_stack):
    dz, stack = vectorial_stack
    focus = int(np.argmin(np.abs(dz)))
    sig = nl.estimate_defocus(stack, device="cpu")
    mask = signal_mask(stack[focus])
    means = np.array([s[mask].mean() for s in sig])
    rho = spearmanr(np.abs(dz), means).statistic
    assert rho >= 0.9, (rho, means)
    assert means[focus] < means[0] and means[focus] < means[-1]
    best = nl.best_focus(stack, device="cpu")
    assert abs(best - focus) <= 1, (best, nl.focus_curve(stack, device="cpu"))


def test_blank_frames_never_outrank_blurred_structure(vectorial_stack):
    """A stack far from focus padded with empty frames (registration, stitching): the constant frames score
    -NO_SIGNAL_SIGMA, below every plane with structure, so best_focus picks the least blurred real plane (the
    network's guess on a blank frame, ~5 px, is its prior, not a measurement)."""
    from napari_linblur.inference.defocus_ops import NO_SIGNAL_SIGMA

    _, stack = vectorial_stack
    far = stack[:2]  # 12 and 9 µm above focus
    padded = np.concatenate([np.zeros_like(far[:1]), far, np.full_like(far[:1], 100)])
    curve = nl.focus_curve(padded, device="cpu")
    assert curve[0] == curve[-1] == -NO_SIGNAL_SIGMA
    assert (curve[1:3] > -NO_SIGNAL_SIGMA).all(), curve
    assert nl.best_focus(padded, device="cpu") == 2, curve


def test_sharp_content_reads_low_sigma():
    from napari_linblur.optics.noise import poisson_gaussian
    from napari_linblur.synth.phantoms import cell_phantom

    content = cell_phantom((96, 96), n_cells=5, rng=7)[0]
    img = poisson_gaussian(content * 1000 + 20, read_noise=2, offset=100, rng=1)
    sig = nl.estimate_defocus(img, device="cpu")
    mask = signal_mask(img)
    assert np.median(sig[mask]) < 2.5


@pytest.mark.skipif(not BBBC006, reason="BBBC006 sample not available")
def test_bbbc006_plane0_strongly_defocused_where_signal():
    import tifffile

    img = tifffile.imread(BBBC006[0])[:256, :256]  # a crop keeps the test fast
    sig = nl.estimate_defocus(img, device="cpu")
    mask = signal_mask(img)
    assert mask.mean() > 0.05
    assert np.median(sig[mask]) > 5.0
    assert np.mean(sig[mask] > 3.0) > 0.9
