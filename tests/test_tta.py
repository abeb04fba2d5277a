"""The shared self-ensemble (inference.tta) and its use by the defocus map and the deblurring network."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

import napari_linblur as nl
from napari_linblur.inference.tta import DIHEDRAL, check_tta, self_ensemble
from napari_linblur.models.drbnet import DRBNet
from napari_linblur.models.hrnet import HDMENet


def _img(shape=(48, 64), seed=0):
    rng = np.random.default_rng(seed)
    return rng.poisson(gaussian_filter(rng.random(shape), 2) * 2000 + 100).astype(np.float32)


def _manual(fn, img):
    """Mean over the 8 transforms of the whole image, each undone (reference for tta=N, no tiling)."""
    outs = []
    for turns, mirror in DIHEDRAL:
        x = np.rot90(img[:, ::-1] if mirror else img, turns).copy()
        o = np.rot90(fn(x), -turns)
        outs.append(o[:, ::-1] if mirror else o)
    return outs


def test_self_ensemble_is_the_mean_of_undone_transforms_on_non_square_tiles():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 1, 3, padding=1)  # not flip-equivariant: random weights
    t = torch.randn(2, 1, 8, 12)
    with torch.no_grad():
        assert self_ensemble(conv, 1) is conv
        ref = []
        for turns, mirror in DIHEDRAL:
            u = torch.rot90(t.flip(-1) if mirror else t, turns, (-2, -1))
            o = torch.rot90(conv(u), -turns, (-2, -1))
            ref.append(o.flip(-1) if mirror else o)
        for n in (2, 4, 8):
            out = self_ensemble(conv, n)(t)
            assert out.shape == t.shape
            torch.testing.assert_close(out, torch.stack(ref[:n]).mean(0), rtol=1e-5, atol=1e-6)
    assert check_tta(np.int64(4)) == 4
    for bad in (3, 0, True, 2.0, "8"):
        with pytest.raises(ValueError, match="tta"):
            check_tta(bad)


def test_defocus_map_and_deblur_network_self_ensemble():
    torch.manual_seed(0)
    hd = HDMENet(width=4, n_branches=3, modules=[1, 1], blocks=1, stem_channels=4, head_channels=8).eval()
    hd.task = "defocus"
    img = _img()
    kw = dict(model=hd, device="cpu", amp="off", tile=512)
    plain = nl.estimate_defocus(img, **kw)
    manual = _manual(lambda x: nl.estimate_defocus(x, **kw), img)
    for n in (2, 8):
        np.testing.assert_allclose(nl.estimate_defocus(img, tta=n, **kw), np.mean(manual[:n], 0), rtol=1e-4,
                                   atol=1e-4)
    assert not np.allclose(nl.estimate_defocus(img, tta=8, **kw), plain)

    torch.manual_seed(1)
    net = DRBNet(widths=(8, 8, 8), kernel_size=3, blocks=1)
    with torch.no_grad():
        for head in [drb.head for drb in net.drb] + [net.full_head]:
            head.weight.normal_(0, 0.02)
            head.bias.normal_(0, 0.02)
    net.eval()
    dkw = dict(method="network", model=net, device="cpu", amp="off", tile=512)
    manual = _manual(lambda x: nl.deblur(x, **dkw), img)
    np.testing.assert_allclose(nl.deblur(img, tta=4, **dkw), np.mean(manual[:4], 0), rtol=1e-4, atol=1e-2)
    for bad in (3, True):
        with pytest.raises(ValueError, match="tta"):
            nl.estimate_defocus(img, model=hd, device="cpu", tta=bad)
        with pytest.raises(ValueError, match="tta"):
            nl.deblur(img, method="network", model=net, device="cpu", tta=bad)
