"""A decoded-ROI cache: ROI pixels as uint16 arrays in memory-mapped ``.npy`` chunks, keyed by the ROI hash.

Stored ROIs are lossless 16-bit PNGs (small, but decoding one takes milliseconds); a GPU extracts features far
faster than a few CPU cores decode PNGs. The cache decodes each ROI once and afterwards hands out zero-copy
memory-mapped views. It is a :class:`~collections.abc.Mapping` from ROI SHA-256 to pixels, so it plugs into
:func:`cadx.cnn.extract_to_store` wherever the PNG-reading mapping does.

Layout: ``root/<chunk>/rois.npy`` (uint16, (n, H, W)) and ``root/<chunk>/manifest.json`` (the hashes in row
order). Chunks are written in a hidden temporary directory and renamed into place when complete (a killed run
leaves nothing half-written), and every row is checked against its hash (:func:`cadx.roi.roi_sha256`) before it
is written, so the cache can never serve other pixels than the ones the hash names. Deleting the directory is
always safe: it only costs decoding again.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from cadx.diskspace import preallocated_memmap
from cadx.errors import RoiError
from cadx.private import make_private_dirs, write_private
from cadx.roi import roi_sha256

__all__ = ["DecodedRoiCache"]


class DecodedRoiCache(Mapping):
    """ROI SHA-256 -> uint16 pixels (H, W), memory-mapped (read-only views).

    Parameters
    ----------
    root : path
        Directory of the cache (created when missing).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        make_private_dirs(self.root)
        self._index: dict[str, tuple[Path, int]] = {}
        self._seen: set[Path] = set()
        self._maps: dict[Path, np.ndarray] = {}
        self.refresh()

    def refresh(self) -> None:
        """Pick up chunks written since (by this or another process)."""
        for chunk in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if chunk in self._seen:
                continue
            try:
                manifest = json.loads((chunk / "manifest.json").read_text())
            except (OSError, ValueError):
                continue
            for row, sha in enumerate(manifest["rois"]):
                self._index.setdefault(sha, (chunk / "rois.npy", row))
            self._seen.add(chunk)

    def __getitem__(self, sha: str) -> np.ndarray:
        path, row = self._index[sha]
        if path not in self._maps:
            self._maps[path] = np.load(path, mmap_mode="r", allow_pickle=False)
        return self._maps[path][row]

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, sha: object) -> bool:
        return sha in self._index

    def __getstate__(self) -> dict:  # worker processes map the files themselves
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    def missing(self, hashes: Iterable[str]) -> list[str]:
        """The hashes (unique, in order) that are not cached."""
        return [h for h in dict.fromkeys(hashes) if h not in self._index]

    def add(self, hashes: Iterable[str], read: Callable[[str], np.ndarray], *, chunk_rows: int = 1024,
            progress: Callable[[int, int, str], None] | None = None) -> int:
        """Decode (``read(sha)``) and cache the ROIs not cached yet; returns how many were added.

        Raises
        ------
        cadx.errors.RoiError
            When ``read`` returns pixels whose hash is not the ROI's (nothing of that chunk is kept).
        """
        todo = self.missing(hashes)
        for start in range(0, len(todo), max(1, int(chunk_rows))):
            part = todo[start:start + max(1, int(chunk_rows))]
            tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".tmp-"))
            try:
                out: np.memmap | None = None
                for i, sha in enumerate(part):
                    pixels = np.asarray(read(sha))
                    if roi_sha256(pixels) != sha:
                        raise RoiError(f"ROI {sha[:12]}", "decoded pixels do not match the ROI's hash",
                                       "the stored ROI file changed or is damaged; re-import it")
                    if out is None:
                        out = preallocated_memmap(tmp / "rois.npy", np.uint16,  # no SIGBUS on a full disk
                                                  (len(part), *pixels.shape))
                    if pixels.shape != out.shape[1:]:
                        raise RoiError(f"ROI {sha[:12]}", f"shape {pixels.shape}, not {out.shape[1:]}",
                                       "ROIs in one cache chunk share one shape (512x512)")
                    out[i] = pixels
                    if progress is not None:
                        progress(start + i + 1, len(todo), "decoding ROIs into the cache")
                if out is not None:
                    out.flush()
                del out
                write_private(tmp / "manifest.json", json.dumps({"rois": part, "dtype": "uint16"}))
                os.replace(tmp, self.root / uuid.uuid4().hex)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            self.refresh()
        return len(todo)
