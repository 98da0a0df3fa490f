"""Curation that points the reviewer at what matters: suspect labels, duplicates and look-alikes (pure computation).

* **Suspect labels** (:func:`rank_suspect_labels`): confident learning (Northcutt, Jiang & Chuang 2021, "Confident
  Learning: Estimating Uncertainty in Dataset Labels", JAIR 70:1373-1411) through ``cleanlab``, on one row per lesion
  (:func:`lesion_probabilities`: the mean of its ROIs' out-of-fold p(malignant) per seed, averaged over seeds).
  ``cleanlab.filter.find_label_issues`` says which labels it counts as likely wrong; ``cleanlab.rank.
  get_label_quality_scores`` (self-confidence: the out-of-fold probability of the given label) orders them.
  Nothing here changes a label: a reviewer looks and may dispute it.
* **Duplicates** (:func:`phash`, :func:`hash_pairs`): a DCT perceptual hash of the ROI image and the pairs of ROIs
  within a Hamming distance; :func:`topk_cosine` finds each row's nearest rows of a feature matrix in blocks (no
  n x n matrix in memory); :func:`pair_class` names what a pair most likely is.

The database side (which ROIs, lesions, patients and folds) is ``cadx.workflows.curation``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.fft import dct
from scipy.ndimage import zoom

from cadx.errors import CadxInputError
from cadx.labels import label_word

__all__ = [
    "CONFIDENT_LEARNING",
    "DEFAULT_HAMMING",
    "PAIR_CLASSES",
    "SuspectLabel",
    "cleanlab_version",
    "hamming_distances",
    "hash_pairs",
    "lesion_probabilities",
    "pair_class",
    "phash",
    "rank_suspect_labels",
    "topk_cosine",
]

#: How the suspects are found, named with its reference (printed with every ranking).
CONFIDENT_LEARNING = ("confident learning (Northcutt, Jiang & Chuang 2021, 'Confident Learning: Estimating "
                      "Uncertainty in Dataset Labels', JAIR 70:1373-1411) with cleanlab: "
                      "find_label_issues(filter_by='prune_by_noise_rate') flags, "
                      "get_label_quality_scores(method='self_confidence') ranks")

#: Near duplicates: at most this many of the 64 pHash bits differ. 64-bit DCT hashes of unrelated images differ in
#: about 32 bits; re-encoding, a brightness or contrast change or mild noise moves a few (imagehash's docs and the
#: tests here); 6 keeps re-saves and small edits of one image and leaves different lesions apart on MIAS.
DEFAULT_HAMMING = 6

PAIR_CLASSES = ("same lesion (views)",
                "same image under different patients (patient-key error; leaks across folds)",
                "look-alike")


def cleanlab_version() -> str:
    """The installed cleanlab's version (recorded beside a ranking)."""
    import cleanlab

    return str(cleanlab.__version__)


# --------------------------------------------------------------------------------------------- suspect labels ---
@dataclass(frozen=True)
class SuspectLabel:
    """One lesion in the ranking: its row in the input, its label (1 malignant, 0 benign), out-of-fold
    p(malignant), label-quality score (lower: more likely wrong), rank (1: most suspect), whether confident learning
    counts it as a label issue, and why, in words."""

    index: int
    label: int
    p: float
    score: float
    rank: int
    flagged: bool
    reason: str


def lesion_probabilities(lesion_ids: np.ndarray, p: np.ndarray, truth: np.ndarray, repeats: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One out-of-fold p(malignant) per lesion: the mean of its ROIs' probabilities in each seed, averaged over the
    seeds (each seed counts once, whatever its number of ROIs).

    Parameters
    ----------
    lesion_ids, p, truth, repeats : array, shape (n_rows,)
        One row per (ROI, seed): the lesion, the ROI's out-of-fold probability, the label (1/0) and the seed.

    Returns
    -------
    lesions : ndarray of int, sorted
    p_lesion : ndarray of float
    labels : ndarray of int
    """
    lesion_ids = np.asarray(lesion_ids, dtype=np.int64)
    p = np.asarray(p, dtype=float)
    truth = np.asarray(truth, dtype=np.int64)
    repeats = np.asarray(repeats, dtype=np.int64)
    if not (len(lesion_ids) == len(p) == len(truth) == len(repeats)):
        raise ValueError("lesion_ids, p, truth and repeats must have one entry per row")
    if np.isnan(p).any():
        raise CadxInputError("probabilities", f"{int(np.isnan(p).sum())} rows have no probability",
                             "pick a classifier the experiment ran (--classifier)")
    lesions = np.unique(lesion_ids)
    labels = np.empty(len(lesions), dtype=np.int64)
    out = np.zeros(len(lesions))
    position = np.searchsorted(lesions, lesion_ids)
    for i in range(len(lesions)):
        rows = position == i
        label = np.unique(truth[rows])
        if len(label) != 1:
            raise ValueError(f"lesion {lesions[i]} has ROIs of both labels")
        labels[i] = label[0]
        seeds = np.unique(repeats[rows])
        out[i] = np.mean([p[rows & (repeats == s)].mean() for s in seeds])
    return lesions, out, labels


def rank_suspect_labels(labels: np.ndarray, p_malignant: np.ndarray) -> list[SuspectLabel]:
    """Every lesion ranked by how likely its label is wrong (confident learning, :data:`CONFIDENT_LEARNING`).

    Parameters
    ----------
    labels : array of int, shape (n,)
        1 malignant, 0 benign (both must occur).
    p_malignant : array of float, shape (n,)
        Out-of-fold p(malignant) of each lesion (it must not have seen its own label).

    Returns
    -------
    list of SuspectLabel
        Ordered by rank: ascending self-confidence score (p of the given label), ties by row.
    """
    from cleanlab.count import get_confident_thresholds
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64)
    p = np.asarray(p_malignant, dtype=float)
    if labels.shape != p.shape or labels.ndim != 1:
        raise ValueError("labels and p_malignant must be 1-D of the same length")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (benign) or 1 (malignant)")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise CadxInputError("probabilities", "values outside [0, 1] or missing", "use out-of-fold probabilities")
    counts = np.bincount(labels, minlength=2)
    if (counts < 2).any():
        raise CadxInputError("labels", f"{counts[0]} benign and {counts[1]} malignant lesions",
                             "confident learning needs at least 2 lesions of each label")
    pred_probs = np.column_stack([1.0 - p, p])
    scores = get_label_quality_scores(labels, pred_probs, method="self_confidence")
    flagged = np.asarray(find_label_issues(labels, pred_probs, filter_by="prune_by_noise_rate"), dtype=bool)
    thresholds = get_confident_thresholds(labels, pred_probs)  # t_k: mean p_k of the examples labelled k
    order = np.lexsort((np.arange(len(labels)), scores))
    out = []
    for rank, i in enumerate(order, start=1):
        out.append(SuspectLabel(int(i), int(labels[i]), float(p[i]), float(scores[i]), rank, bool(flagged[i]),
                                _reason(int(labels[i]), float(p[i]), thresholds, bool(flagged[i]))))
    return out


def _reason(label: int, p: float, thresholds: np.ndarray, flagged: bool) -> str:
    other = 1 - label
    p_other = p if other == 1 else 1.0 - p
    threshold = float(thresholds[other])
    said = (f"labelled {label_word(label)}, out-of-fold p({label_word(other)}) {p_other:.2f}")
    where = (f"the {label_word(other)} class threshold {threshold:.2f} (mean p({label_word(other)}) of the lesions "
             f"labelled {label_word(other)})")
    if flagged:
        return f"{said} — above {where}: confident learning counts it as a likely label error"
    if p_other >= threshold:
        return (f"{said} — above {where}, but outside the number of such errors confident learning estimates: "
                "look, not flagged")
    return f"{said} — below {where}: not flagged"


# -------------------------------------------------------------------------------------------------- duplicates ---
def phash(pixels: np.ndarray, *, hash_size: int = 8, highfreq_factor: int = 4) -> int:
    """The DCT perceptual hash (pHash) of a grey image as a ``hash_size**2``-bit integer.

    The image is resampled to ``hash_size * highfreq_factor`` pixels square (area average, then linear), its 2-D
    DCT-II taken, and the top-left ``hash_size`` x ``hash_size`` low frequencies compared with their median: a bit
    is 1 where the coefficient is above it. This is imagehash's ``phash`` algorithm; written here with scipy
    because imagehash would add PyWavelets and a PIL round-trip of 16-bit pixels for ten lines of code, and the
    ROIs are uint16 arrays already.
    """
    pixels = np.asarray(pixels, dtype=np.float64)
    if pixels.ndim != 2 or min(pixels.shape) < 2:
        raise ValueError(f"phash needs a 2-D image; got shape {pixels.shape}")
    side = hash_size * highfreq_factor
    # area average down to a multiple of the side first (an antialiasing box filter), then resample to the side
    step_r, step_c = max(1, pixels.shape[0] // side), max(1, pixels.shape[1] // side)
    rows, cols = pixels.shape[0] // step_r * step_r, pixels.shape[1] // step_c * step_c
    boxed = pixels[:rows, :cols].reshape(rows // step_r, step_r, cols // step_c, step_c).mean(axis=(1, 3))
    small = zoom(boxed, (side / boxed.shape[0], side / boxed.shape[1]), order=1, grid_mode=True, mode="nearest")
    coefficients = dct(dct(small, axis=0, norm="ortho"), axis=1, norm="ortho")[:hash_size, :hash_size]
    bits = (coefficients > np.median(coefficients)).ravel()
    return int(sum(1 << i for i, b in enumerate(bits[::-1]) if b))


def hamming_distances(hashes: np.ndarray, query: int) -> np.ndarray:
    """Bits that differ between ``query`` and each of ``hashes`` (64-bit pHashes as uint64)."""
    return np.bitwise_count(np.asarray(hashes, dtype=np.uint64) ^ np.uint64(query)).astype(np.int64)


def hash_pairs(hashes: np.ndarray, *, max_distance: int = DEFAULT_HAMMING, block: int = 2048
               ) -> list[tuple[int, int, int]]:
    """Every pair ``(i, j, distance)``, ``i < j``, of 64-bit hashes at most ``max_distance`` bits apart.

    Compared ``block`` rows at a time against all later rows: memory is block x n, never n x n."""
    if not 0 <= max_distance <= 64:
        raise CadxInputError("--hamming", f"got {max_distance}", "use 0 to 64 bits (default "
                             f"{DEFAULT_HAMMING})")
    h = np.asarray(hashes, dtype=np.uint64)
    out: list[tuple[int, int, int]] = []
    for start in range(0, len(h), block):
        rows = h[start:start + block]
        distance = np.bitwise_count(rows[:, None] ^ h[None, :]).astype(np.int64)
        ii, jj = np.nonzero(distance <= max_distance)
        ii = ii + start
        keep = ii < jj
        out.extend((int(i), int(j), int(distance[i - start, j])) for i, j in zip(ii[keep], jj[keep], strict=True))
    return sorted(out)


def topk_cosine(matrix: np.ndarray, k: int, *, queries: np.ndarray | None = None, block: int = 2048
                ) -> tuple[np.ndarray, np.ndarray]:
    """Each query row's ``k`` most cosine-similar rows of ``matrix`` (itself left out), in blocks.

    Row norms are computed once; a block of ``block`` query rows meets a block of ``block`` matrix rows at a time,
    and each query keeps its best ``k`` so far: memory is block x block plus n x k, never n x n.

    Parameters
    ----------
    matrix : array, shape (n, d)
    k : int
    queries : array of int, optional
        Rows of ``matrix`` to search for (default: all).

    Returns
    -------
    indices : ndarray of int, shape (n_queries, min(k, n - 1))
        Most similar first (ties: lower row first).
    similarities : ndarray of float, same shape
    """
    x = np.asarray(matrix, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError("matrix must be 2-D")
    n = len(x)
    q = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    k = min(int(k), n - 1)
    if k < 1:
        return np.empty((len(q), 0), np.int64), np.empty((len(q), 0))
    norms = np.linalg.norm(x, axis=1)
    norms[norms == 0] = 1.0  # a zero vector is similar to nothing (cosine 0), not NaN
    best_i = np.empty((len(q), k), np.int64)
    best_s = np.empty((len(q), k))
    for qs in range(0, len(q), block):
        rows = q[qs:qs + block]
        a = x[rows] / norms[rows, None]
        keep_i = np.empty((len(rows), 0), np.int64)
        keep_s = np.empty((len(rows), 0))
        for cs in range(0, n, block):
            sims = a @ (x[cs:cs + block] / norms[cs:cs + block, None]).T
            cols = np.arange(cs, min(cs + block, n))
            sims[rows[:, None] == cols[None, :]] = -np.inf  # never one's own nearest
            cand_i = np.concatenate([keep_i, np.broadcast_to(cols, sims.shape)], axis=1)
            cand_s = np.concatenate([keep_s, sims], axis=1)
            order = np.lexsort((cand_i, -cand_s), axis=1)[:, :k]
            keep_i = np.take_along_axis(cand_i, order, axis=1)
            keep_s = np.take_along_axis(cand_s, order, axis=1)
        best_i[qs:qs + len(rows)] = keep_i
        best_s[qs:qs + len(rows)] = keep_s
    return best_i, best_s


def pair_class(*, same_lesion: bool, same_patient: bool, same_image: bool) -> str:
    """What a pair of similar ROIs most likely is (one of :data:`PAIR_CLASSES`).

    ``same_image``: identical pixels or pHashes within the threshold. Two ROIs of one lesion are its views;
    one image under two patients is a patient-key error, and it leaks across folds (cross-validation groups by
    patient); anything else (one patient's two lesions, or only close in feature space) is a look-alike."""
    if same_lesion:
        return PAIR_CLASSES[0]
    if same_image and not same_patient:
        return PAIR_CLASSES[1]
    return PAIR_CLASSES[2]
