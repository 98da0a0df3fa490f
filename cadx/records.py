"""The experiment record: one typed, versioned schema, one serializer, its JSON Schema and the upgrade of old records.

An experiment is stored as two JSON documents (``experiments.config`` and ``experiments.results``); this module is
the one place that says what they hold. Writers build the dataclasses below and store :func:`to_json` of them;
readers call :func:`read_config` / :func:`read_results` (or ``cadx.workflows.experiments.load_experiment``) and get
the dataclasses back, every field present, so no reader guesses keys.

Versions (``ExperimentResults.schema_version``; the config carries none, so that its SHA-256 stays that of the
records made before versions existed):

1. Records written before this module (no ``schema_version`` key). Depending on their age they lack the cohort,
   the ROI set's SHA-256, the Platt calibration, the z-scored ensemble, the comparisons' ``family`` and the
   Nadeau-Bengio fold sizes.
   :func:`upgrade_results` fills what can be known (``family``: ``"paper"``, as only the paper's three tests
   existed) and leaves the rest ``None``; the stored row is never rewritten (read-time upgrade).
2. Records with cohorts, calibration, the z-ensemble and comparison families; their comparisons' headline
   test was Nadeau-Bengio on the first seed's folds, their DeLong test ran on probabilities pooled over folds,
   and the folds' operating points were not recorded. Read as they are (the new fields are ``None``).
3. This schema: each comparison adds the mean-of-folds AUC difference, the DeLong test on within-fold ranks
   (``rank_delong_*``) and the corrected repeated k-fold t-test over every seed's folds (``repeated_nb_*``);
   each SVM's calibration adds the folds' operating points chosen on their training data.

The JSON Schema published in ``docs/experiment-record.schema.json`` is :func:`json_schema` of
:class:`ExperimentRecord` (``python -m cadx.records docs/experiment-record.schema.json`` rewrites it; a test checks
that the published file is the generated one).

Numbers that were not finite (NaN, inf) are stored as ``null``: statistics are ``float | None``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

import numpy as np

from cadx.errors import CadxInputError
from cadx.methods import METHODS

__all__ = [
    "EXPERIMENT_NAME_MAX",
    "SCHEMA_VERSION",
    "SvmEngineRecord",
    "Binormal",
    "Calibration",
    "CohortRecord",
    "Comparison",
    "ExperimentConfig",
    "ExperimentRecord",
    "ExperimentResults",
    "LevelResults",
    "MethodRecord",
    "RepeatedMethod",
    "Repeats",
    "RocPoints",
    "SweepLayer",
    "WeightsRecord",
    "config_sha256",
    "experiment_name",
    "from_json",
    "json_safe",
    "json_schema",
    "read_config",
    "read_results",
    "to_json",
    "upgrade_results",
]

SCHEMA_VERSION = 3
"""The version :class:`ExperimentResults` are written with (1: records from before this module, no key)."""

EXPERIMENT_NAME_MAX = 128
"""The longest experiment name, in characters: the ``experiments.name`` column (``db.models``) and every place a name
is typed (``cadx sweep/evaluate --name``, the Sweep page, Rename) check this one limit through
:func:`experiment_name`."""


def experiment_name(value: str | None) -> str:
    """``value`` with surrounding blanks removed, checked as an experiment name.

    Raises
    ------
    CadxInputError
        When it is empty or longer than :data:`EXPERIMENT_NAME_MAX` characters.
    """
    name = (value or "").strip()
    if not name:
        raise CadxInputError("name", "the experiment name is empty", "type a name")
    if len(name) > EXPERIMENT_NAME_MAX:
        raise CadxInputError("name", f"the experiment name has {len(name)} characters",
                             f"use at most {EXPERIMENT_NAME_MAX}")
    return name

_OMIT_NONE = "omit_none"  # field metadata: the key is left out when the value is None
_OMIT_IF = "omit_if"  # ... left out when the value equals this
_FLATTEN = "flatten"  # ... a dict merged into its parent (the config's ``extra``)
_KEYS = "keys"  # ... a dict whose keys must be one of these (the method keys of cadx.methods.METHODS)
_METHOD_KEYS: dict[str, Any] = {_KEYS: tuple(METHODS)}  # metadata of the fields keyed by method (always present)

T = TypeVar("T")


def _optional(*, omit: bool = True) -> Any:
    """A field that may be None (left out of the JSON when None if ``omit``)."""
    return field(default=None, metadata={_OMIT_NONE: True} if omit else {})


# --------------------------------------------------------------------------------------------------- config ---
@dataclass(frozen=True)
class WeightsRecord:
    """The CNN weights an experiment used."""

    name: str
    sha256: str
    source: str


@dataclass(frozen=True)
class CohortRecord:
    """What an experiment keeps of its cohort (``cadx.workflows.cohorts.ResolvedCohort.to_record``).

    ``definition`` is a ``cadx.cohorts.CohortDefinition.to_dict`` (versioned by that class); ``synthetic_used`` is
    ``"real"``, ``"synthetic"``, ``"both"`` or ``"none"``; ``counts``: patients, lesions, ROIs by label, type and
    source.
    """

    name: str
    definition: dict[str, Any]
    synthetic_used: str
    roi_set_sha256: str
    counts: dict[str, Any]


@dataclass(frozen=True)
class SvmEngineRecord:
    """Which SVM engine ran and why (``cadx.svm.resolve_svm_engine``): ``requested`` is the user's ``exact``,
    ``approx`` or ``auto``, ``engine`` the one that ran (``gram`` = exact, ``approx``), ``components`` the sketch
    size of the approximate engine (0 for the exact one)."""

    requested: str
    engine: str
    reason: str
    components: int = 0


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that determines an experiment's numbers; its SHA-256 (:func:`config_sha256`) names them.

    ``grid`` is the SVM grid (parameter -> values) or ``"cadx.svm.default_grid"``; ``repeats`` is left out of the
    JSON when 1, ``min_lesions_per_class_per_fold`` when the default, ``tap_pooling`` when ``flatten`` and
    ``svm_engine`` when the exact engine was asked for, so that the records made before any of them existed keep
    their SHA-256; ``extra`` holds keys a caller added (``ExperimentSettings.extra``), stored at the
    top level. ``cohort`` and ``roi_set_sha256`` are None in records made before cohorts existed.
    """

    backbone: str
    weights: WeightsRecord
    preprocessing: str
    taps: list[str]
    ensemble_tap: str
    analytic_version: str | None
    n_folds: int
    n_inner: int
    seed: int
    grid: dict[str, list[Any]] | str
    cv_groups: str
    roi_ids: list[int]
    roi_sha256: list[str]
    excluded_roi_ids: list[int]
    cohort: CohortRecord | None = _optional()
    roi_set_sha256: str | None = _optional()
    repeats: int = field(default=1, metadata={_OMIT_IF: 1})
    min_lesions_per_class_per_fold: int | None = _optional()
    tap_pooling: str = field(default="flatten", metadata={_OMIT_IF: "flatten"})
    svm_engine: SvmEngineRecord | None = _optional()
    extra: dict[str, Any] = field(default_factory=dict, metadata={_FLATTEN: True})

    @property
    def seeds(self) -> list[int]:
        """The seeds of the (repeated) cross-validation: ``seed, seed + 1, ...``."""
        return list(range(self.seed, self.seed + self.repeats))


# -------------------------------------------------------------------------------------------------- results ---
@dataclass(frozen=True)
class SweepLayer:
    """One tap of the layer sweep (Fig. 3): SVM1 cross-validated on that tap's features.

    With repeated cross-validation, ``auc_mean`` is the mean over every seed's folds and the ``*_by_seed`` fields
    and ``auc_sd_between_seeds`` are present; ``fold_aucs`` are the first seed's.
    """

    n_features: int
    n_features_nonconstant: int
    auc_mean: float | None
    auc_sd: float | None
    auc_se: float | None
    fold_aucs: list[float | None]
    seconds: float
    fold_aucs_by_seed: list[list[float | None]] | None = _optional()
    auc_mean_by_seed: list[float | None] | None = _optional()
    auc_sd_between_seeds: float | None = _optional()


@dataclass(frozen=True)
class RocPoints:
    """An ROC curve as points (false- and true-positive fractions)."""

    fpr: list[float | None]
    tpr: list[float | None]


@dataclass(frozen=True)
class Binormal:
    """The fitted binormal ROC curve (``cadx.stats.binormal_fit``), or the ``error`` that kept it from fitting."""

    a: float | None = _optional()
    b: float | None = _optional()
    auc: float | None = _optional()
    se_auc: float | None = _optional()
    converged: bool | None = _optional()
    fpr: list[float | None] | None = _optional()
    tpr: list[float | None] | None = _optional()
    error: str | None = _optional()


@dataclass(frozen=True)
class Calibration:
    """What Platt's slope floor did in every fold of every seed of one SVM (``calibration_record``)."""

    seeds: list[int]
    slope: list[list[float | None]]
    slope_used: list[list[float | None]]
    clamped: list[list[bool]]
    n_clamped: int
    n_folds: int
    floor: str
    inner_mean: list[list[float | None]]
    inner_sd: list[list[float | None]]
    # schema 3: per seed and fold, the decision value above which a case is called malignant, chosen on the
    # training fold only (``cadx.svm.operating_point``); None in older records
    operating_point: list[list[float | None]] | None = _optional()
    operating_point_rule: str | None = _optional()


@dataclass(frozen=True)
class MethodRecord:
    """Table-1 statistics of one classifier (``cadx.methods.METHODS``) from its out-of-fold scores.

    The SVMs (A, B) also have the fields from their cross-validation (decision-value AUC, per-fold parameters and
    feature counts) and, from schema 1's later records on, their ``calibration``; B has the segmentation qualities.
    """

    title: str
    auc_mean: float | None
    auc_sd: float | None
    auc_se: float | None
    fold_aucs: list[float | None]
    pooled_auc: float | None
    pooled_ci95: list[float | None]
    lesion_auc: float | None
    lesion_clustered_bootstrap_ci95: list[float | None] | None
    roc: RocPoints
    seconds: float
    binormal: Binormal
    decision_value_auc: float | None = _optional()
    fold_aucs_decision: list[float | None] | None = _optional()
    fold_aucs_proba: list[float | None] | None = _optional()
    best_params: list[dict[str, Any]] | None = _optional()
    n_features: int | None = _optional()
    n_features_kept: list[int] | None = _optional()
    calibration: Calibration | None = _optional()
    segmentation_quality: dict[str, int] | None = _optional()


@dataclass(frozen=True)
class Comparison:
    """One significance test between two classifiers (``"C vs A"``), Bonferroni-adjusted within its family."""

    comparison: str
    family: str
    auc_difference: float | None
    delong_p: float | None
    delong_ci95: list[float | None]
    paired_t_p: float | None
    nadeau_bengio_p: float | None
    delong_p_bonferroni: float | None
    paired_t_p_bonferroni: float | None
    nadeau_bengio_p_bonferroni: float | None
    nadeau_bengio_n_train: float | None = _optional()  # lesions per training / test fold (schema 1: not recorded)
    nadeau_bengio_n_test: float | None = _optional()
    # schema 3 (None in older records). ``auc_difference`` above is the difference of the two *pooled* AUCs (over
    # probabilities pooled across folds); ``fold_mean_auc_difference`` is Table 1's: mean fold AUC of the first
    # minus that of the second (first seed).
    fold_mean_auc_difference: float | None = _optional()
    # DeLong's paired test on each case's within-fold rank (``cadx.stats.within_fold_ranks``; first seed): pooling
    # ranks, not probabilities whose level differs between folds
    rank_delong_auc_difference: float | None = _optional()
    rank_delong_p: float | None = _optional()
    rank_delong_ci95: list[float | None] | None = _optional()
    rank_delong_p_bonferroni: float | None = _optional()
    # the headline test: Nadeau-Bengio's corrected t over every seed's folds (Bouckaert & Frank's corrected
    # repeated k-fold t-test; df = seeds x folds - 1), its mean fold-AUC difference (first - second)
    repeated_nb_mean_difference: float | None = _optional()
    repeated_nb_t: float | None = _optional()
    repeated_nb_df: int | None = _optional()
    repeated_nb_p: float | None = _optional()
    repeated_nb_p_bonferroni: float | None = _optional()
    repeated_nb_n_seeds: int | None = _optional()
    repeated_nb_n_folds: int | None = _optional()

    @property
    def pair(self) -> tuple[str, str]:
        """The two method keys, e.g. ``("C", "A")``."""
        first, second = self.comparison.split(" vs ")
        return first, second


@dataclass(frozen=True)
class RepeatedMethod:
    """One classifier's fold-mean AUC under every seed of a repeated cross-validation."""

    title: str
    auc_mean_by_seed: list[float | None]
    auc_mean: float | None
    auc_sd_between_seeds: float | None


@dataclass(frozen=True)
class Repeats:
    """The repeated cross-validation: the seeds and each classifier's AUC per seed."""

    seeds: list[int]
    methods: dict[str, RepeatedMethod] = field(metadata=_METHOD_KEYS)


@dataclass(frozen=True)
class ExperimentResults:
    """What an experiment measured (``experiments.results``).

    ``extraction`` is the CNN extraction report of the run (``cadx.workflows.features.ExtractionReport``);
    ``methods`` maps method keys to their statistics, in display order; ``repeats`` is None with one seed.
    """

    n_rois: int
    n_lesions: int
    n_patients: int
    n_malignant_rois: int
    weights_note: str
    sweep: dict[str, SweepLayer]
    methods: dict[str, MethodRecord] = field(metadata=_METHOD_KEYS)
    comparisons: list[Comparison]
    schema_version: int = SCHEMA_VERSION
    cohort: str | None = _optional(omit=False)
    roi_set_sha256: str | None = _optional(omit=False)
    extraction: dict[str, Any] | None = _optional()
    repeats: Repeats | None = _optional()


@dataclass(frozen=True)
class ExperimentRecord:
    """An experiment as ``cadx experiment --json`` prints it and ``experiment_summary`` returns it (as JSON)."""

    id: int
    name: str
    kind: str
    created_at: str
    created_by: str
    code_version: str
    config_sha256: str
    uses_synthetic_data: bool
    uses_random_weights: bool
    seconds: float | None
    config: ExperimentConfig
    results: ExperimentResults


@dataclass(frozen=True)
class LevelResults:
    """Table 1, the tests and the repeats of an experiment at ROI level (as stored) or lesion level (computed from
    the stored predictions, ``cadx.workflows.results.experiment_results``)."""

    level: str
    n_cases: int
    n_positive: int
    methods: dict[str, MethodRecord] = field(metadata=_METHOD_KEYS)
    comparisons: list[Comparison]
    repeats: Repeats | None = None


# ----------------------------------------------------------------------------------------------- serializer ---
def json_safe(value: Any) -> Any:
    """``value`` with numpy scalars/arrays turned into plain JSON types and non-finite floats into None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    return value


def to_json(value: Any) -> Any:
    """The JSON form of a record (any dataclass of this module, or lists/dicts of them): plain types, keys in field
    order, optional keys left out as the fields' metadata says, non-finite floats as None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.metadata.get(_FLATTEN):
                out.update(to_json(item))
            elif (item is None and f.metadata.get(_OMIT_NONE)) or (_OMIT_IF in f.metadata
                                                                   and item == f.metadata[_OMIT_IF]):
                continue
            else:
                out[f.name] = to_json(item)
        return out
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return json_safe(value)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))


def from_json(cls: type[T], data: Any, *, where: str = "record") -> T:
    """The record of type ``cls`` from its JSON form; a missing required key, an unknown key or a value of the
    wrong type raises :class:`~cadx.errors.CadxInputError` naming its path (e.g. ``results.methods.A.auc_mean``)."""
    return typing.cast(T, _convert(cls, data, where))


def _convert(tp: Any, data: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return data
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if data is None:
            if type(None) in options:
                return None
            raise _bad(where, data, "a value")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, data, where)
            except CadxInputError as exc:
                errors.append(exc)
        raise errors[0]
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _convert_dataclass(tp, data, where)
    if origin is list:
        if not isinstance(data, list):
            raise _bad(where, data, "a list")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(data)]
    if origin is dict:
        if not isinstance(data, Mapping):
            raise _bad(where, data, "an object")
        _key, item = typing.get_args(tp)
        return {str(k): _convert(item, v, f"{where}.{k}") for k, v in data.items()}
    if tp is bool:
        if not isinstance(data, bool):
            raise _bad(where, data, "true or false")
        return data
    if tp is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise _bad(where, data, "a whole number")
        return data
    if tp is float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise _bad(where, data, "a number")
        return float(data)
    if tp is str:
        if not isinstance(data, str):
            raise _bad(where, data, "text")
        return data
    raise TypeError(f"{where}: no conversion for type {tp!r}")  # a programming error in this module


def _convert_dataclass(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise _bad(where, data, "an object")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    known = set()
    flatten = None
    for f in dataclasses.fields(cls):
        known.add(f.name)
        if f.metadata.get(_FLATTEN):
            flatten = f.name
            continue
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], f"{where}.{f.name}")
            for key in kwargs[f.name] if _KEYS in f.metadata else ():
                if key not in f.metadata[_KEYS]:
                    raise CadxInputError(f"{where}.{f.name}.{key}", "is not a method of cadx.methods.METHODS",
                                         f"use one of {list(f.metadata[_KEYS])}, or register the method there")
        elif _required(f):
            raise CadxInputError(f"{where}.{f.name}", "is missing",
                                 "the record is damaged or not an experiment record of cadx")
    unknown = {k: v for k, v in data.items() if k not in known}
    if flatten is not None:
        kwargs[flatten] = dict(unknown)
    elif unknown:
        raise CadxInputError(f"{where}.{sorted(unknown)[0]}", "is not a field of the experiment record",
                             f"remove it, or add it to {cls.__module__}.{cls.__name__} (and bump SCHEMA_VERSION)")
    return cls(**kwargs)


def _required(f: dataclasses.Field[Any]) -> bool:
    """A field without a default, or one whose key must be present (the methods: a record always has them)."""
    return (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING) or _KEYS in f.metadata


def _bad(where: str, data: Any, expected: str) -> CadxInputError:
    return CadxInputError(where, f"got {type(data).__name__} {str(data)[:60]!r}", f"it must be {expected}")


def config_sha256(config: ExperimentConfig) -> str:
    """The SHA-256 naming a config: of its JSON form with sorted keys (``json.dumps(..., sort_keys=True)``)."""
    return hashlib.sha256(json.dumps(to_json(config), sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------------------- reading, upgrade ---
def upgrade_results(results: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON of stored results in the current schema (a copy; the stored row is left as it is).

    Version 1 (no ``schema_version``): ``cohort`` and ``roi_set_sha256`` become None where missing (records from
    before cohorts) and every comparison without a ``family`` is one of the paper's. Version 2: the schema-3 fields
    are optional, so only the version changes. A version newer than this code knows is refused.
    """
    if not isinstance(results, Mapping):
        raise _bad("results", results, "an object")
    version = results.get("schema_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _bad("results.schema_version", version, f"a whole number from 1 to {SCHEMA_VERSION}")
    if version > SCHEMA_VERSION:
        raise CadxInputError("results.schema_version", f"the record has schema {version}, this cadx reads up to "
                             f"{SCHEMA_VERSION}", "update cadx to read it")
    upgraded = dict(results)
    if version == 1:
        upgraded.setdefault("cohort", None)
        upgraded.setdefault("roi_set_sha256", None)
        upgraded["comparisons"] = [{"family": "paper", **c} if isinstance(c, Mapping) else c
                                   for c in results.get("comparisons", [])]
    # 2 -> 3: only optional fields were added (None where not recorded)
    upgraded["schema_version"] = SCHEMA_VERSION
    return upgraded


def read_config(config: Mapping[str, Any]) -> ExperimentConfig:
    """A stored config as :class:`ExperimentConfig` (any schema version: the config's keys only ever grew)."""
    return from_json(ExperimentConfig, config, where="config")


def read_results(results: Mapping[str, Any]) -> ExperimentResults:
    """Stored results as :class:`ExperimentResults`, upgraded from older schema versions (:func:`upgrade_results`)."""
    return from_json(ExperimentResults, upgrade_results(results), where="results")


# --------------------------------------------------------------------------------------------- JSON Schema ---
def json_schema(cls: type = ExperimentRecord) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a record type, generated from its type hints: one ``$defs`` entry per
    dataclass, required keys = fields without a default, no other keys (except in the config, whose ``extra``
    keys sit at its top level)."""
    defs: dict[str, Any] = {}
    root = _schema(cls, defs)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://cadx.invalid/experiment-record.schema.json",
            "title": f"cadx experiment record (schema version {SCHEMA_VERSION})",
            "description": "Generated by cadx.records.json_schema; do not edit by hand.",
            **root, "$defs": dict(sorted(defs.items()))}


def _schema(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    if tp is Any:
        return {}
    if origin in (Union, types.UnionType):
        options = [_schema(option, defs) for option in typing.get_args(tp)]
        if all(set(o) == {"type"} and isinstance(o["type"], str) for o in options):  # e.g. number or null
            return {"type": [o["type"] for o in options]}
        return {"anyOf": options}
    if tp is type(None):
        return {"type": "null"}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        name = tp.__name__
        if name not in defs:
            defs[name] = {}  # placeholder against recursion
            hints = _hints(tp)
            properties: dict[str, Any] = {}
            required = []
            extra = False
            for f in dataclasses.fields(tp):
                if f.metadata.get(_FLATTEN):
                    extra = True
                    continue
                properties[f.name] = _schema(hints[f.name], defs)
                if _KEYS in f.metadata:
                    properties[f.name]["propertyNames"] = {"enum": list(f.metadata[_KEYS])}
                if _required(f):
                    required.append(f.name)
            doc = " ".join((tp.__doc__ or "").split("\n\n")[0].split())
            defs[name] = {"type": "object", "description": doc, "properties": properties, "required": required,
                          "additionalProperties": extra}
        return {"$ref": f"#/$defs/{name}"}
    if origin is list:
        (item,) = typing.get_args(tp)
        return {"type": "array", "items": _schema(item, defs)}
    if origin is dict:
        _key, item = typing.get_args(tp)
        return {"type": "object", "additionalProperties": _schema(item, defs)}
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if tp in simple:
        return {"type": simple[tp]}
    raise TypeError(f"no JSON Schema for type {tp!r}")


def _main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m cadx.records OUT.json  (writes the JSON Schema of the experiment record)")
        return 2
    Path(argv[0]).write_text(json.dumps(json_schema(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
