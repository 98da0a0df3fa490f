"""Tests of the extraction speed path: DataLoader workers, autocast precisions kept apart in the feature store,
the decoded-ROI cache and the per-stage timings (cadx.cnn, cadx.roicache)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cadx import cnn
from cadx.errors import RoiError
from cadx.roi import roi_sha256
from cadx.roicache import DecodedRoiCache


def _rois(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:512, :512]
    out = []
    for i in range(n):
        blob = np.exp(-((yy - 256 - 15 * i) ** 2 + (xx - 256) ** 2) / (2 * (45 + 8 * i) ** 2))
        out.append(np.clip((0.3 + 0.5 * blob + 0.05 * rng.standard_normal((512, 512))) * 65535, 0, 65535))
    return np.stack(out).astype(np.uint16)


@pytest.fixture(scope="module")
def alexnet_random() -> cnn.LoadedBackbone:
    return cnn.load_backbone("alexnet", "random")


def _before(loaded: cnn.LoadedBackbone, rois: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """The extraction loop as it was before the speed path (preprocess a batch, pad it, one forward pass)."""
    taps = list(loaded.backbone.taps)
    dev = torch.device("cpu")
    out: dict[str, list] = {t: [] for t in taps}
    with cnn._deterministic(dev, None), torch.inference_mode():
        extractor = cnn._extractor(loaded, tuple(taps), dev)
        for start in range(0, len(rois), batch_size):
            batch = list(rois[start:start + batch_size])
            n = len(batch)
            x = cnn.preprocess_rois(batch, mean=loaded.spec.mean, std=loaded.spec.std, start_index=start)
            if n < batch_size:
                x = torch.cat([x, x.new_zeros((batch_size - n, *x.shape[1:]))])
            res = extractor(x.to(dev).contiguous(memory_format=torch.channels_last))
            for t in taps:
                out[t].append(res[t][:n].reshape(n, -1).float().cpu().numpy())
    return {t: np.concatenate(v) for t, v in out.items()}


def test_fp32_is_bit_identical_to_before_with_and_without_workers(alexnet_random):
    rois = _rois(5)
    want = _before(alexnet_random, rois, batch_size=2)
    timings: dict = {}
    plain = cnn.extract_features(rois, backbone=alexnet_random, batch_size=2, device="cpu", timings=timings)
    workers = cnn.extract_features(list(rois), backbone=alexnet_random, batch_size=2, device="cpu", num_workers=2)
    for tap, array in want.items():
        assert np.array_equal(plain[tap], array), tap
        assert np.array_equal(workers[tap], array), tap
    assert set(timings) == {"read", "preprocess", "wait", "copy", "forward", "write", "total", "rois"}
    assert timings["rois"] == 5 and timings["forward"] > 0 and timings["preprocess"] > 0
    assert timings["total"] >= timings["forward"] + timings["write"]
    with pytest.raises(TypeError, match="len"):
        cnn.extract_features((r for r in rois), backbone=alexnet_random, batch_size=2, device="cpu", num_workers=1)
    with pytest.raises(ValueError, match="precision"):
        cnn.extract_features(rois, backbone=alexnet_random, device="cpu", precision="int8")


def test_bf16_autocast_on_cpu_correlates_with_fp32(alexnet_random):
    rois = _rois(4, seed=1)
    fp32 = cnn.extract_features(rois, backbone=alexnet_random, batch_size=2, device="cpu")
    bf16 = cnn.extract_features(rois, backbone=alexnet_random, batch_size=2, device="cpu", precision="bf16")
    for tap in fp32:
        assert bf16[tap].dtype == np.float32 and bf16[tap].shape == fp32[tap].shape
        assert not np.array_equal(bf16[tap], fp32[tap])  # autocast really ran in bfloat16
        r = np.corrcoef(fp32[tap].ravel(), bf16[tap].ravel())[0, 1]
        assert r > 0.99, (tap, r)


def test_precisions_never_mix_in_the_store(alexnet_random, tmp_path):
    rois = _rois(3, seed=2)
    by_hash = {roi_sha256(r): r for r in rois}
    store = cnn.FeatureStore(tmp_path / "features")
    key = {"backbone": "alexnet", "weights_sha256": alexnet_random.weights.sha256}
    assert cnn.feature_preprocessing("fp32") == cnn.PREPROCESSING_VERSION  # fp32 keys are the old keys
    assert cnn.feature_preprocessing("bf16") == cnn.PREPROCESSING_VERSION + "+bf16"
    assert cnn.extract_to_store(by_hash, store, backbone=alexnet_random, taps=["fc8"], batch_size=2,
                                device="cpu", precision="bf16") == 3
    assert store.missing(by_hash, taps=["fc8"], **key) == list(by_hash)  # fp32 still missing
    assert cnn.extract_to_store(by_hash, store, backbone=alexnet_random, taps=["fc8"], batch_size=2,
                                device="cpu", num_workers=1) == 3
    hashes = list(by_hash)
    fp32 = np.asarray(store.open("fc8", hashes, **key))
    bf16 = np.asarray(store.open("fc8", hashes, preprocessing=cnn.feature_preprocessing("bf16"), **key))
    direct = cnn.extract_features(rois, backbone=alexnet_random, taps=["fc8"], batch_size=2, device="cpu")
    assert np.array_equal(fp32, direct["fc8"]) and not np.array_equal(bf16, fp32)
    np.testing.assert_array_equal(store.load("fc8", hashes, **key), fp32)


def test_decoded_roi_cache_round_trip_and_hash_check(alexnet_random, tmp_path):
    rois = _rois(3, seed=3)
    by_hash = {roi_sha256(r): r for r in rois}
    cache = DecodedRoiCache(tmp_path / "cache")
    reads = []

    def read(sha):
        reads.append(sha)
        return by_hash[sha]

    assert cache.add(list(by_hash), read, chunk_rows=2) == 3
    assert cache.add(list(by_hash), read) == 0 and len(reads) == 3  # decoded once
    again = DecodedRoiCache(tmp_path / "cache")  # another process sees the chunks
    assert set(again) == set(by_hash) and len(again) == 3
    for sha, pixels in by_hash.items():
        view = again[sha]
        assert view.dtype == np.uint16 and isinstance(view.base, np.memmap | np.ndarray)
        assert np.array_equal(view, pixels)
    # extraction from the cache (with workers) = from the arrays
    from_cache = cnn.extract_features(cnn._Picked(again, list(by_hash)), backbone=alexnet_random, taps=["fc6"],
                                      batch_size=2, device="cpu", num_workers=2)
    direct = cnn.extract_features(rois, backbone=alexnet_random, taps=["fc6"], batch_size=2, device="cpu")
    assert np.array_equal(from_cache["fc6"], direct["fc6"])
    # pixels that are not the ROI the hash names are refused, and nothing is cached
    other = DecodedRoiCache(tmp_path / "other")
    bad = rois[0].copy()
    bad[0, 0] ^= 1
    with pytest.raises(RoiError, match="do not match"):
        other.add([roi_sha256(rois[0])], lambda sha: bad)
    assert len(DecodedRoiCache(tmp_path / "other")) == 0
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "other").iterdir())


@pytest.mark.slow
def test_cli_extract_with_workers_bf16_and_the_decoded_cache(tmp_path):
    from typer.testing import CliRunner

    from cadx.cli import app
    from cadx.workflows import open_workspace
    from cadx.workflows.features import decoded_roi_cache, feature_store, roi_records

    runner = CliRunner()
    data = tmp_path / "data"
    assert runner.invoke(app, ["demo", "--lesions", "3", "--seed", "1", "--data-dir", str(data)]).exit_code == 0
    common = ["--backbone", "alexnet", "--weights", "random", "--taps", "fc8", "--batch-size", "4",
              "--data-dir", str(data), "--device", "cpu"]
    bad = runner.invoke(app, ["extract", *common, "--precision", "int8"])
    assert bad.exit_code == 2 and "int8" in bad.output
    result = runner.invoke(app, ["extract", *common, "--workers", "1", "--precision", "bf16", "--decoded-cache",
                                 "--timings"])
    assert result.exit_code == 0, result.output
    assert "bf16 autocast" in result.output and "seconds per stage" in " ".join(result.output.split())
    assert "bf16 against fp32 on a sample of" in " ".join(result.output.split())  # the loss is shown, not silent
    workspace = open_workspace(data)
    records = roi_records(workspace, included_only=False)
    hashes = list(dict.fromkeys(r.sha256 for r in records))
    assert set(decoded_roi_cache(workspace)) == set(hashes)  # every ROI decoded once into the cache
    store = feature_store(workspace)
    loaded = cnn.load_backbone("alexnet", "random")
    key = {"backbone": "alexnet", "weights_sha256": loaded.weights.sha256}
    assert store.missing(hashes, taps=["fc8"], **key) == hashes  # fp32 untouched
    assert store.missing(hashes, taps=["fc8"], preprocessing=cnn.feature_preprocessing("bf16"), **key) == []
    again = runner.invoke(app, ["extract", *common, "--precision", "bf16"])
    assert again.exit_code == 0 and "0 of" in again.output  # nothing left to extract at bf16
