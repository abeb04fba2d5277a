"""Validation, normalization, device selection and the model registry."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_linblur as nl
from napari_linblur.inference.device import resolve_device
from napari_linblur.inference.normalize import fit_normalization
from napari_linblur.inference.validate import check_alpha, check_image, check_same_shape
from napari_linblur.models import registry


def test_public_api_is_lazy_and_complete():
    import subprocess
    import sys

    code = "import sys, napari_linblur; print('torch' in sys.modules, 'napari' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    for name in ["open_zstack", "load_model", "list_models", "synthesize_blur", "deblur_pair", "deblur",
                 "estimate_defocus", "focus_curve", "best_focus", "alpha_from_positions"]:
        assert name in dir(nl)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.zeros((0, 5)), "empty"),
        (np.zeros(5), "shape"),
        (np.zeros((2, 2)), "at least"),
        (np.array([[np.nan] * 5] * 5), "NaN"),
        (np.zeros((32, 32, 3)), "RGB"),
        (np.zeros((8, 8), complex), "dtype"),
        (np.zeros((8, 8), "datetime64[s]"), "img has dtype datetime64"),  # was numpy's "cannot include dtype 'M'"
        (np.zeros((8, 8), "timedelta64[s]"), "img has dtype timedelta64"),
        (None, "None"),
        ("real.tif", r"img is a path \('real.tif'\), not an image; open it first: napari_linblur.open_zstack"),
    ],
)
def test_check_image_rejects_bad_input(value, match):
    with pytest.raises((ValueError, TypeError), match=match):
        check_image(value, "img")


def _with_pixel(value, shape=(64, 64)):
    img = np.random.default_rng(0).poisson(100, shape).astype(np.float64)
    img[5, 7] = value
    return img


@pytest.mark.parametrize("value", [1e39, -1e39, 3.5e38])
def test_check_image_rejects_values_beyond_float32(value):
    """float64 values beyond float32's range would become Inf in the networks: refused up front, named."""
    with pytest.raises(ValueError, match=r"^img has values up to \|x\| = .*e\+3[89].*\|x\| < 3\.4e38"):
        check_image(_with_pixel(value), "img")
    with pytest.raises(ValueError, match=r"plane has values up to \|x\| = 1e\+300"):
        check_image(np.full((8, 8), 1e300), "plane")
    # the float32 range itself, integers and narrower floats pass
    check_image(_with_pixel(3.4e38), "img")
    check_image(np.full((8, 8), 2**64 - 1, np.uint64), "img")
    check_image(np.full((8, 8), 3e38, np.float32), "img")


def test_operations_refuse_values_beyond_float32(tiny_models):
    import dask.array as da

    img, big = _with_pixel(1e39), np.random.default_rng(1).random((64, 64)) * 1e300
    for fn, model in ((nl.estimate_defocus, tiny_models["defocus_noise"]), (nl.deblur, tiny_models["deblur"])):
        kw = dict(model=model, device="cpu")
        for bad in (img, big):
            with pytest.raises(ValueError, match=r"^img has values up to .*accepted range \|x\| < 3\.4e38"):
                fn(bad, **kw)
        lazy = fn(da.from_array(np.stack([_with_pixel(1.0), img]), chunks=(1, 64, 64)), **kw)
        with pytest.raises(ValueError, match=r"^img has values up to \|x\| = 1e\+39"):
            lazy.compute()


def test_pair_and_alpha_checks():
    with pytest.raises(ValueError, match="same shape"):
        check_same_shape(np.zeros((4, 4)), np.zeros((4, 5)), ("img_a", "img_c"))
    assert check_alpha(0.0) == 0.0
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        check_alpha(0.0, allow_zero=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_alpha(1.5)
    with pytest.raises(TypeError):
        check_alpha("0.5")


def test_normalization_is_shared_and_invertible():
    a = np.linspace(100, 4100, 1000).reshape(10, 100)
    c = (a - 100) / 2 + 100
    n = fit_normalization(a, c, low=0, high=100)
    assert n.offset == pytest.approx(100) and n.scale == pytest.approx(4000)
    np.testing.assert_allclose(n.invert(n.apply(c)), c, rtol=1e-6)
    const = fit_normalization(np.full((4, 4), 7.0))
    assert np.isfinite(const.apply(np.full((4, 4), 7.0))).all()


def test_sparse_signal_on_a_flat_background_scales_with_the_input(tiny_models):
    """Fewer bright pixels than the top percentile (beads on a clipped background): the percentile range collapses,
    and the normalization falls back to the pixels' own spread, so results follow the input's scale and offset."""
    img = np.zeros((64, 64))
    img[[10, 30, 50], [20, 40, 12]] = 1.0
    assert fit_normalization(img).scale == 1.0 and fit_normalization(img * 1e3).scale == 1e3
    n = fit_normalization(img + 100)
    assert n.offset == 100 and n.scale == 1.0
    assert fit_normalization(np.full((4, 4), 1e-3)).scale == pytest.approx(1e-3)  # constant: its own magnitude
    assert fit_normalization(np.zeros((4, 4))).scale == 1.0
    ref = nl.deblur(img, model=tiny_models["deblur"], device="cpu", amp="off")
    for scaled, back in ((img * 1e3, lambda y: y / 1e3), (img + 100, lambda y: y - 100)):
        out = back(nl.deblur(scaled, model=tiny_models["deblur"], device="cpu", amp="off"))
        np.testing.assert_allclose(out, ref, atol=2e-4)


def test_a_module_passed_as_model_is_left_as_the_caller_had_it(tiny_models, monkeypatch):
    """Operations work on a copy: the caller's module keeps its training mode and memory layout."""
    net = registry.load_model(tiny_models["deblur"], device="cpu").train()
    nl.deblur(np.random.default_rng(0).random((40, 40)), model=net, device="cpu")
    assert net.training
    assert all(p.is_contiguous() for p in net.parameters())  # not converted to channels-last
    # a stack is estimated with one copy of the module, not one per plane
    import copy

    from napari_linblur.models.hrnet import HDMENet

    small = HDMENet(width=4, n_branches=2, modules=[1], blocks=1, stem_channels=4, head_channels=8).train()
    calls = []
    real = copy.deepcopy

    def counting(obj, *a, **k):
        if obj is small:
            calls.append(1)
        return real(obj, *a, **k)

    monkeypatch.setattr(copy, "deepcopy", counting)
    nl.estimate_defocus(np.random.default_rng(0).random((3, 32, 32)), model=small, device="cpu")
    assert len(calls) == 1 and small.training


def test_demo_refuses_an_unknown_device_before_writing(tmp_path, capsys):
    from napari_linblur.cli.main import main

    assert main(["demo", "--device", "bogus", "--out", str(tmp_path / "demo")]) == 2
    assert "device must be" in capsys.readouterr().err and not (tmp_path / "demo").exists()


def test_device_selection():
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu-please")
    assert resolve_device(None).type in ("cpu", "cuda", "mps")
    assert resolve_device(torch.device("cpu")).type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")


@pytest.mark.parametrize("device", ["xla", "vulkan", "xpu", "meta", "hip", torch.device("meta"), "tpu-please"])
def test_device_types_outside_cpu_cuda_mps_are_refused(device, tiny_models):
    """torch parses many device types the models cannot run on: a ValueError naming the argument, up front."""
    msg = r"^device must be 'auto', 'cpu', 'cuda\[:N\]' or 'mps', got "
    with pytest.raises(ValueError, match=msg):
        resolve_device(device)
    with pytest.raises(ValueError, match=msg):
        nl.estimate_defocus(np.zeros((32, 32), np.float32), model=tiny_models["defocus_noise"], device=device)
    with pytest.raises(TypeError, match="device"):
        resolve_device(3)


class _Tiny(torch.nn.Module):
    def __init__(self, width=2):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, width, 3, padding=1)


def test_registry_roundtrip_hash_and_errors(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.ARCHITECTURES, "Tiny", f"{__name__}:_Tiny")
    m = _Tiny(width=3)
    path = registry.save_model(m, tmp_path / "tiny.safetensors", {"architecture": "Tiny", "task": "toy",
                                                                   "config": {"width": 3}})
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["sha256"] == registry.sha256_file(path)
    loaded = registry.load_model(path, device="cpu")
    assert loaded.task == "toy"
    torch.testing.assert_close(loaded.conv.weight, m.conv.weight)
    # a flipped byte is caught by the hash
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="sha256"):
        registry.load_model(path, device="cpu")
    with pytest.raises(FileNotFoundError):
        registry.load_model(tmp_path / "missing.safetensors")
    # missing weights or images are also ValueErrors (SPEC: bad input is a ValueError/TypeError)
    with pytest.raises(ValueError, match="missing.safetensors does not exist"):
        registry.load_model(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="no such file or folder"):
        nl.open_zstack(tmp_path / "missing.tif")
    with pytest.raises(ValueError, match="unknown model"):
        registry.load_model("no-such-model")
    for empty in ("", "  "):  # was "'.' is a folder": the current folder
        with pytest.raises(ValueError, match=r"^model is empty .*give a shipped name \(ae-default"):
            registry.load_model(empty)
    (tmp_path / "w.pt").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ValueError, match="safetensors"):
        registry.load_model(tmp_path / "w.pt")


def test_shipped_names_and_inconsistent_cards(tmp_path, monkeypatch):
    """A file or folder named like a shipped model in the current folder does not hide it; cards that are not
    objects, name another task than their architecture does, or carry a config of another network are
    ValueErrors, not tracebacks."""
    from napari_linblur.models.autoencoder import LinearLatentAE

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ae-default").mkdir()
    (tmp_path / "deblur-default").write_text("not a model")
    assert registry.load_model("ae-default", device="cpu").task == "ae"
    assert registry.read_card("deblur-default")["task"] == "deblur"

    torch.manual_seed(0)
    ae = LinearLatentAE(arch="resnet", channels=[8, 16], latent_channels=4, norm="none", output="linear")
    bad_task = registry.save_model(ae, tmp_path / "t.safetensors",
                                   {"architecture": "LinearLatentAE", "task": "deblur", "config": ae.config})
    with pytest.raises(ValueError, match="inconsistent"):
        registry.load_model(bad_task, device="cpu")
    bad_arch = registry.save_model(ae, tmp_path / "a.safetensors",
                                   {"architecture": "HDMENet", "task": "defocus", "config": ae.config})
    with pytest.raises(ValueError, match="does not fit a HDMENet"):
        registry.load_model(bad_arch, device="cpu")
    good = registry.save_model(ae, tmp_path / "g.safetensors",
                               {"architecture": "LinearLatentAE", "task": "ae", "config": ae.config})
    good.with_suffix(".json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a JSON object"):
        registry.load_model(good, device="cpu")
    good.with_suffix(".json").write_text("{broken")
    with pytest.raises(ValueError, match="g.json is not valid JSON"):
        registry.load_model(good, device="cpu")
    # a sha256 that is not 64 hex digits, an undecodable card, a config torch cannot build: named, not tracebacks
    good.with_suffix(".json").write_text('{"sha256": 5}')
    with pytest.raises(ValueError, match="64 hexadecimal digits, got 5"):
        registry.load_model(good, device="cpu")
    good.with_suffix(".json").write_bytes(b'{"sha256": "\xff\xfe"}')
    with pytest.raises(ValueError, match="g.json cannot be read"):
        registry.load_model(good, device="cpu")
    good.with_suffix(".json").unlink()
    negative = registry.save_model(ae, tmp_path / "n.safetensors", {"architecture": "LinearLatentAE", "task": "ae",
                                                                     "config": {**ae.config, "channels": [-3, 16]}})
    with pytest.raises(ValueError, match="config does not fit a LinearLatentAE"):
        registry.load_model(negative, device="cpu")
    # a card whose config is far larger than its weights: refused from the shapes, before the network is built
    # (channels of 4096 would have allocated the whole network first)
    huge = registry.save_model(ae, tmp_path / "h.safetensors", {"architecture": "LinearLatentAE", "task": "ae",
                                                                 "config": {**ae.config, "channels": [4096, 4096]}})
    with pytest.raises(ValueError, match=r"h.safetensors: weights do not fit .* is \(8, .* in the file, \(4096"):
        registry.load_model(huge, device="cpu")
    nan = registry.save_model(ae, tmp_path / "f.safetensors", {"architecture": "LinearLatentAE", "task": "ae",
                                                                "config": {**ae.config, "scale": float("nan")}})
    with pytest.raises(ValueError, match="non-finite"):
        registry.load_model(nan, device="cpu")
    # a card without "task" (written by hand): the architecture says it (it was "a None model")
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(good), framework="pt") as f:
        card = {k: v for k, v in json.loads(f.metadata()["card"]).items() if k not in ("task", "sha256")}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    save_file(tensors, str(tmp_path / "untasked.safetensors"), metadata={"card": json.dumps(card)})
    assert registry.load_model(tmp_path / "untasked.safetensors", device="cpu").task == "ae"


def test_a_module_built_in_a_script_is_checked_against_the_operation():
    """A module without ``.task`` is known by its class: another network, or a module that is none of ours, is a
    TypeError naming the kind of model needed, before any tile runs; the right network is accepted."""
    from napari_linblur.models.autoencoder import LinearLatentAE
    from napari_linblur.models.drbnet import DRBNet
    from napari_linblur.models.hrnet import HDMENet

    img = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    drb = DRBNet(widths=(8, 8, 8), kernel_size=3, blocks=1)
    hd = HDMENet(width=4, n_branches=2, modules=[1], blocks=1, stem_channels=4, head_channels=8)
    ae = LinearLatentAE(arch="resnet", channels=[8, 16], latent_channels=4, blocks=1)
    for call, needs in ((lambda m: nl.estimate_defocus(img, model=m, device="cpu"), "defocus"),
                        (lambda m: nl.synthesize_blur(img, img, 0.5, model=m, device="cpu"), "ae"),
                        (lambda m: nl.deblur_pair(img, img, 0.5, model=m, device="cpu"), "ae"),
                        (lambda m: nl.deblur(img, method="network", model=m, device="cpu"), "deblur")):
        for wrong in [m for m in (drb, hd, ae) if registry.module_task(m) != needs] + [torch.nn.Linear(2, 2)]:
            with pytest.raises(TypeError, match=rf"model is a {type(wrong).__name__}.*needs a {needs!r} model"):
                call(wrong)
    assert registry.module_task(drb) == "deblur" and registry.module_task(hd) == "defocus"
    assert registry.module_task(ae) == "ae" and registry.module_task(torch.nn.Linear(2, 2)) is None
    assert nl.estimate_defocus(img, model=hd, device="cpu").shape == img.shape
    assert nl.synthesize_blur(img, img, 0.5, model=ae, device="cpu").shape == img.shape
    assert nl.deblur(img, method="network", model=drb, device="cpu").shape == img.shape


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_model_files_with_non_finite_weights_are_refused(tmp_path, bad):
    from napari_linblur.models.hrnet import HDMENet

    config = {"width": 4, "n_branches": 2, "modules": [1], "blocks": 1, "stem_channels": 4, "head_channels": 8}
    m = HDMENet(**config)
    name, tensor = next((k, v) for k, v in m.state_dict().items() if v.is_floating_point())
    with torch.no_grad():
        tensor.view(-1)[0] = bad
    path = registry.save_model(m, tmp_path / "broken.safetensors",
                               {"architecture": "HDMENet", "task": "defocus", "config": config})
    with pytest.raises(ValueError, match=rf"broken\.safetensors.*{name}.*NaN or Inf"):
        registry.load_model(path, device="cpu")
    with pytest.raises(ValueError, match="NaN or Inf"):
        nl.estimate_defocus(np.ones((16, 16)), model=path, device="cpu")


def test_non_callable_progress_or_should_stop_is_refused_before_the_model_loads():
    img = np.ones((16, 16), np.float32)
    missing = "/no/such/model.safetensors"  # loading it would be a FileNotFoundError: the check comes first
    ops = (lambda **k: nl.estimate_defocus(img, model=missing, **k),
           lambda **k: nl.deblur(img, model=missing, **k),
           lambda **k: nl.synthesize_blur(img, img, 0.5, model=missing, **k),
           lambda **k: nl.deblur_pair(img, img, 0.5, model=missing, **k))
    for op in ops:
        for name, value in (("progress", 5), ("should_stop", "x"), ("progress", True)):
            with pytest.raises(TypeError, match=rf"{name} must be a callable.*or None, got {value!r}"):
                op(device="cpu", **{name: value})


def test_lazy_graphs_follow_one_rule_for_callbacks_devices_and_mixed_inputs():
    """With dask input every operation: leaves progress/should_stop out of the graph with a warning (deblur and the
    autoencoder operations put a GUI's cancel flag in it, which cannot be sent to a cluster; estimate_defocus
    dropped them silently); keeps device="auto" to be resolved where a plane runs (deblur fixed the caller's
    device and bf16 choice); and gives a lazy result for any dask input (deblur computed a lazy σ map)."""
    import threading

    import cloudpickle
    import dask.array as da

    from napari_linblur.models.registry import ModelHandle

    stack = np.random.default_rng(0).random((2, 48, 48)).astype(np.float32) * 1000 + 10
    lazy = da.from_array(stack, chunks=(1, 48, 48))
    flag = threading.Event()
    ops = (lambda **k: nl.estimate_defocus(lazy, **k), lambda **k: nl.deblur(lazy, **k),
           lambda **k: nl.synthesize_blur(lazy, stack, 0.5, **k), lambda **k: nl.deblur_pair(stack, lazy, 0.5, **k))
    for op in ops:
        with pytest.warns(UserWarning, match="should_stop applies to numpy input.*not used"):
            out = op(should_stop=flag.is_set)
        assert isinstance(out, da.Array)
        flag.set()
        graph = cloudpickle.loads(cloudpickle.dumps(out))  # picklable: it can go to a cluster
        np.testing.assert_allclose(graph.compute(), out.compute())  # and the set flag stops nothing
        flag.clear()
    handles = []
    original = ModelHandle.__getstate__

    def spy(self):
        handles.append((self.task, self.device))
        return original(self)

    ModelHandle.__getstate__ = spy
    try:
        cloudpickle.dumps(nl.deblur(lazy))
        cloudpickle.dumps(nl.deblur(lazy, method="reblur-extrapolate"))
    finally:
        ModelHandle.__getstate__ = original
    assert handles and all(device == "auto" for _, device in handles), handles
    smap = nl.estimate_defocus(lazy, device="cpu")
    mixed = nl.deblur(stack[0], method="guided", sigma_map=smap[0], device="cpu")
    assert isinstance(mixed, da.Array)
    np.testing.assert_allclose(mixed.compute(), nl.deblur(stack[0], method="guided", sigma_map=smap[0].compute(),
                                                          device="cpu"), rtol=1e-5, atol=1e-3)
    with pytest.raises(TypeError, match="compute must be True, False or None, got 'no'"):
        nl.focus_curve(stack, method="brenner", compute="no")
    # a dask map the method does not use leaves a numpy run numpy, with its progress reported
    calls = []
    with pytest.warns(UserWarning, match="sigma_map is not used") as caught:
        out = nl.deblur(stack, method="network", sigma_map=smap, device="cpu", progress=lambda d, t: calls.append(d))
    assert isinstance(out, np.ndarray) and calls
    assert not any("numpy input" in str(w.message) for w in caught)


def test_a_dask_array_of_unknown_shape_is_named_with_the_fix():
    import dask.array as da

    x = da.from_array(np.ones((3, 16, 16)), chunks=(1, 16, 16))
    x = x[x[:, 0, 0] >= 0]  # boolean indexing: the length of the first axis is unknown until computed
    with pytest.raises(ValueError, match=r"img has unknown shape \(nan, 16, 16\).*img\.compute_chunk_sizes\(\)"):
        check_image(x, "img")
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        nl.estimate_defocus(x, device="cpu")
    assert check_image(x.compute_chunk_sizes(), "img").shape == (3, 16, 16)


def test_normalization_of_values_near_the_float32_limit_stays_finite():
    """Inputs inside the accepted range |x| < 3.4e38 whose span or result exceeds float32: finite, no overflow
    warning; results inside the range are those of the float32 computation."""
    import warnings

    img = (np.random.default_rng(0).random((32, 32)) - 0.5) * 6e38
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        n = fit_normalization(img)
        assert np.isfinite([n.offset, n.scale]).all() and n.scale > 0
        x = n.apply(img)
        assert np.isfinite(x).all() and -0.01 <= x.min() and x.max() <= 1.01
        with pytest.warns(UserWarning, match="float32 range"):
            out = n.invert(np.array([0.0, 1.0, 2.0], np.float32))
    assert np.isfinite(out).all() and out[-1] == np.finfo(np.float32).max
    normal = fit_normalization(np.linspace(0, 4000, 100))
    y = np.linspace(-1, 2, 7, dtype=np.float32)
    np.testing.assert_array_equal(normal.invert(y), y * np.float32(normal.scale) + np.float32(normal.offset))


@pytest.mark.parametrize("path", [None, 5, ["a.tif"]])
def test_open_zstack_names_the_argument_for_a_non_path(path):
    with pytest.raises(TypeError, match=r"path must be a file or folder path \(str or os.PathLike\), got"):
        nl.open_zstack(path)


def test_init_weights_of_another_configuration_name_the_difference(tmp_path):
    """The error ended in torch's dangling "Error(s) in loading state_dict for LinearLatentAE:" and gave no hint."""
    from napari_linblur.models.autoencoder import CONFIGS, LinearLatentAE

    small = LinearLatentAE(**{**CONFIGS["default"], "latent_channels": 4})
    path = registry.save_model(small, tmp_path / "m.safetensors",
                               {"architecture": "LinearLatentAE", "task": "ae", "config": small.config})
    with pytest.raises(ValueError, match=r"another network configuration than this run's \(latent_channels: 4 in "
                                         r"the init model, 8 here\); .*--model-config\)$"):
        registry.init_weights(LinearLatentAE(**CONFIGS["default"]), path, "LinearLatentAE")


def test_the_model_cache_is_bounded_and_keeps_one_copy_per_network(tmp_path):
    """Evaluating checkpoint after checkpoint kept every network for the life of the process (60 files: +260 MB),
    and model=None, the default's name, and device 'auto' / 'cpu' each kept a copy of the same weights."""
    import shutil

    from napari_linblur.models import registry

    registry.clear_model_cache()
    a = registry.cached_model(None, "defocus", "cpu")
    assert registry.cached_model("defocus-default", "defocus", "cpu") is a
    assert registry.cached_model("defocus-default", "defocus", "auto") is a  # no GPU here: 'auto' is the CPU
    weights = Path(registry.__file__).parent / "weights" / "defocus-default.safetensors"
    for i in range(registry.MODEL_CACHE_SIZE + 3):
        copy = tmp_path / f"ckpt{i}.safetensors"
        shutil.copy(weights, copy)
        registry.cached_model(str(copy), "defocus", "cpu")
    assert len(registry._MODEL_CACHE) == registry.MODEL_CACHE_SIZE
    assert registry.cached_model("defocus-default", "defocus", "cpu") is not a  # the oldest went first
    registry.clear_model_cache()
    assert not registry._MODEL_CACHE
