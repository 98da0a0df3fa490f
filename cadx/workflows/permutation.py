"""The label-permutation test of a stored experiment (``cadx.permutation``), as a resumable job.

The experiment's ROIs, labels, lesion and patient groups and first-seed outer folds are read back
(``cadx.workflows.analyses.experiment_data``), its CNN taps and analytic features from their stores. Each
permutation permutes the lesion labels within those folds and reruns the whole nested cross-validation of every tap,
of Method B and of the fusions (``cadx.permutation.cv_statistics``) with the experiment's seed, grid and inner
folds; it is one checkpoint unit (stage ``"permutation"``, unit = its index, payload the JSON of its AUCs) under a
scope naming the experiment, its data, the permutation seed and the code version, so a killed worker's job (or a
failed or cancelled one submitted again) resumes at the first unfinished permutation; the number of permutations is
not part of the scope, since a permutation's labels depend only on the seed and its index. The result is a
``permutation_tests`` row.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from cadx.errors import CadxInputError
from cadx.methods import fusions
from cadx.permutation import DEFAULT_PERMUTATIONS, PermutationResult, cv_statistics, permute_within_folds, tap_name
from cadx.records import ExperimentRecord, from_json, to_json
from cadx.workflows.accounts import record_audit
from cadx.workflows.analyses import ExperimentData, _analytic, _tap_matrix, experiment_data
from cadx.workflows.experiments import code_version
from cadx.workflows.importing import Progress
from cadx.workflows.workspace import Workspace
from db.models import PermutationTest

__all__ = ["MAX_PERMUTATIONS", "StoredPermutationTest", "latest_permutation_test", "observed_statistics",
           "permutation_caption", "permutation_table", "run_permutation_test"]

MAX_PERMUTATIONS = 100_000
_STAGE = "permutation"


@dataclass(frozen=True)
class StoredPermutationTest:
    """A ``permutation_tests`` row with its typed result."""

    id: int
    experiment_id: int
    n_permutations: int
    seed: int
    code_version: str
    seconds: float
    created_by: str
    created_at: str
    result: PermutationResult


def observed_statistics(record: ExperimentRecord) -> dict[str, float]:
    """The headline statistics a permutation is compared with, from the record: each tap's first-seed fold-mean AUC
    (``tap:<name>``) and each classifier's (Table 1's ``auc_mean``, the first seed's)."""
    out: dict[str, float] = {}
    for tap, layer in record.results.sweep.items():
        values = [v for v in layer.fold_aucs if v is not None]
        if values:
            out[tap_name(tap)] = float(np.mean(values))
    for key, method in record.results.methods.items():
        if method.auc_mean is not None:
            out[key] = float(method.auc_mean)
    return out


def _check_count(permutations: int) -> int:
    if isinstance(permutations, bool) or not isinstance(permutations, (int, np.integer)) \
            or not 1 <= permutations <= MAX_PERMUTATIONS:
        raise CadxInputError("permutations", f"got {permutations!r}",
                             f"give a whole number from 1 to {MAX_PERMUTATIONS} (default {DEFAULT_PERMUTATIONS})")
    return int(permutations)


def _scope(data: ExperimentData, seed: int, version: str) -> str:
    """What a permutation's numbers depend on: the experiment, its ROIs' labels, groups and folds, the seed, the
    code."""
    lines = " ".join(f"{int(a)},{int(b)},{int(c)},{int(d)}" for a, b, c, d in
                     zip(data.y, data.lesions, data.patients, data.folds, strict=True))
    text = f"{data.record.config_sha256} {lines} {int(seed)} {version}"
    return hashlib.sha256(text.encode()).hexdigest()


def _encode(values: dict[str, float]) -> bytes:
    return json.dumps({k: v if math.isfinite(v) else None for k, v in values.items()}, allow_nan=False).encode()


def _decode(payload: bytes, keys: set[str]) -> dict[str, float] | None:
    """A checkpointed permutation's AUCs, or None when the payload is not one (it is computed again)."""
    try:
        data = json.loads(payload.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or set(data) != keys or not all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in data.values()):
        return None
    return {k: math.nan if v is None else float(v) for k, v in data.items()}


def run_permutation_test(workspace: Workspace, experiment_id: int, *, permutations: int = DEFAULT_PERMUTATIONS,
                         seed: int = 0, user: str, progress: Progress | None = None,
                         checkpoints: Any = None) -> int:
    """Run ``permutations`` label permutations of experiment ``experiment_id`` and store the test; returns its id.

    ``progress(done, total, message)`` after each permutation; ``checkpoints`` (the job runner's
    ``JobCheckpoints``) keeps each finished permutation, so a resumed run computes only the missing ones and stores
    exactly the result of an uninterrupted run.
    """
    n = _check_count(permutations)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise CadxInputError("seed", f"got {seed!r}", "give a whole number >= 0")
    started = time.perf_counter()
    data = experiment_data(workspace, experiment_id)
    config = data.config
    record = data.record
    observed = observed_statistics(record)
    features = dict(_tap_matrix(workspace, data, tap) for tap in config.taps)
    analytic = _analytic(workspace, data)[0] if "B" in record.results.methods else None
    combine = {m.key: m.combine for m in fusions() if m.key in record.results.methods}
    grid = config.grid if isinstance(config.grid, dict) else None  # a dict, or the name of cadx's default grid
    version = code_version()
    store = None if checkpoints is None else checkpoints.scoped(_scope(data, seed, version), _STAGE)
    null: dict[str, list[float]] = {k: [] for k in observed}
    for b in range(n):
        payload = None if store is None else store.load(str(b))
        values = None if payload is None else _decode(payload, set(observed))
        if values is None:
            y = permute_within_folds(data.y, data.lesions, data.folds, np.random.default_rng([int(seed), b]))
            computed = cv_statistics(features, y, data.lesions, patients=data.patients, folds=data.folds,
                                     n_inner=config.n_inner, grid=grid, seed=config.seed,
                                     ensemble_tap=config.ensemble_tap, analytic=analytic, fusions=combine)
            values = {k: computed.get(k, math.nan) for k in observed}
            if store is not None:
                store.save(str(b), _encode(values))
        for key in observed:
            null[key].append(values[key])
        if progress is not None:
            progress(b + 1, n, f"permutation {b + 1}/{n}: nested cross-validation rerun on permuted labels")
    result = PermutationResult.from_null(observed, null, seed=int(seed))
    seconds = time.perf_counter() - started
    with workspace.sessions.begin() as session:
        row = PermutationTest(experiment_id=int(experiment_id), n_permutations=n, seed=int(seed),
                              code_version=version, result=to_json(result), seconds=float(seconds),
                              created_by=user)
        session.add(row)
        session.flush()
        record_audit(session, user=user, action="permutation_test", target=f"experiment {experiment_id}",
                     detail={"permutations": n, "seed": int(seed), "test_id": int(row.id)})
        return int(row.id)


def latest_permutation_test(workspace: Workspace, experiment_id: int) -> StoredPermutationTest | None:
    """The newest permutation test of an experiment (None when it has none), its result validated."""
    with workspace.sessions() as session:
        row = session.scalars(select(PermutationTest).where(PermutationTest.experiment_id == int(experiment_id))
                              .order_by(PermutationTest.id.desc()).limit(1)).first()
        if row is None:
            return None
        result = from_json(PermutationResult, row.result, where=f"permutation test {row.id}")
        return StoredPermutationTest(id=int(row.id), experiment_id=int(row.experiment_id),
                                     n_permutations=int(row.n_permutations), seed=int(row.seed),
                                     code_version=row.code_version, seconds=float(row.seconds),
                                     created_by=row.created_by, created_at=row.created_at.isoformat(),
                                     result=result)


def permutation_table(result: PermutationResult, record: ExperimentRecord) -> pd.DataFrame:
    """One row per tested statistic (classifiers first, then taps in network order): observed fold-mean AUC (first
    seed), the null's mean, SD and 5-95 % range, the permutation p and its Monte-Carlo SE."""
    names = {k: m.title for k, m in record.results.methods.items()}
    keys = [k for k in result.statistics if not k.startswith("tap:")]
    keys += [tap_name(t) for t in record.config.taps if tap_name(t) in result.statistics]
    rows = []
    for key in keys:
        s = result.statistics[key]
        rows.append({"statistic": names.get(key, key if not key.startswith("tap:") else f"SVM1 on tap {key[4:]}"),
                     "observed AUC": s.observed, "null mean": s.null.mean, "null SD": s.null.sd,
                     "null 5 %": s.null.q05, "null 95 %": s.null.q95, "p": s.p_value, "p MC SE": s.p_mc_se})
    return pd.DataFrame(rows, columns=["statistic", "observed AUC", "null mean", "null SD", "null 5 %", "null 95 %",
                                       "p", "p MC SE"])


def permutation_caption(test: StoredPermutationTest) -> str:
    """What was permuted and how many times, for the pages, the CLI and the report."""
    return (f"Permutation test {test.id} ({test.n_permutations} permutations, seed {test.seed}, "
            f"{test.seconds:.0f} s): lesion labels permuted within the first seed's outer folds (each lesion's ROIs "
            "share one label; every fold keeps its benign/malignant counts and its patients); the whole nested "
            "cross-validation rerun per permutation. p = (1 + #null ≥ observed) / (1 + B), ± its Monte-Carlo SE "
            f"√(p(1 − p)/B); the smallest reachable p is {1 / (1 + test.n_permutations):.3g}.")
