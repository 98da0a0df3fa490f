"""Benchmark: the sweep's estimate before Start against the time the sweep then takes (issue 25 item 4).

Imports ``../shared/data/mini-mias/all-mias`` (real MIAS) into a temporary workspace, estimates a sweep
(``cadx.workflows.experiments.estimate_experiment``: a fresh workspace has no earlier run, so the rates come from
the short calibration), runs it (``run_experiment``), then estimates a second sweep from the first one's measured
seconds and runs that too. Prints estimate vs actual, their ratio (the target: within a factor 2) and the machine's
load (1-minute load average and CPU count), which the actual time depends on.

Usage::

    python benchmarks/bench_sweep_estimate.py                # AlexNet (random weights), 6 taps, 5 folds, 2 seeds
    python benchmarks/bench_sweep_estimate.py --repeats 1 --taps fc6,fc7,fc8
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cadx.workflows import import_mias, open_workspace  # noqa: E402
from cadx.workflows.experiments import ExperimentSettings, estimate_experiment, run_experiment  # noqa: E402
from cadx.workflows.features import resolve_backbone  # noqa: E402

MIAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "mini-mias" / "all-mias"


def _load() -> str:
    return f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"


def _one(workspace, loaded, settings: ExperimentSettings, label: str) -> float:
    began = time.perf_counter()
    estimate = estimate_experiment(workspace, loaded, settings)
    estimating = time.perf_counter() - began
    print(f"{label}: estimate {estimate.time.words()} [{estimate.time.seconds:.1f} s, range "
          f"{estimate.time.low:.1f}-{estimate.time.high:.1f} s] from {estimate.basis} "
          f"(estimating took {estimating:.1f} s; {_load()})")
    print(f"  parts (s): {', '.join(f'{k} {v:.1f}' for k, v in estimate.parts.items())}")
    began = time.perf_counter()
    run_experiment(workspace, loaded, settings, name=label, user="bench")
    actual = time.perf_counter() - began
    ratio = estimate.time.seconds / actual
    inside = estimate.time.low <= actual <= estimate.time.high
    print(f"  actual {actual:.1f} s; estimate / actual = {ratio:.2f} "
          f"({'within' if 0.5 <= ratio <= 2 else 'OUTSIDE'} a factor 2; actual "
          f"{'inside' if inside else 'outside'} the range); {_load()}")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--taps", default="conv3,conv5,pool5,fc6,fc7,fc8")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if not MIAS.is_dir():
        sys.exit(f"MIAS not found at {MIAS}")
    with tempfile.TemporaryDirectory(prefix="cadx-bench-estimate-") as tmp:
        workspace = open_workspace(Path(tmp) / "data")
        import_mias(workspace, MIAS, user="bench")
        loaded, _ = resolve_backbone("alexnet", weights="random")
        taps = tuple(args.taps.split(","))
        first = ExperimentSettings(taps=taps, ensemble_tap=taps[-1], n_folds=args.folds, repeats=args.repeats,
                                   cohort="all", min_lesions_per_class_per_fold=1)
        ratios = [_one(workspace, loaded, first, "first sweep (calibration)")]
        second = ExperimentSettings(taps=taps, ensemble_tap=taps[-1], n_folds=args.folds, seed=1,
                                    repeats=args.repeats + 1, cohort="all", min_lesions_per_class_per_fold=1)
        ratios.append(_one(workspace, loaded, second, "second sweep (measured rates, features stored)"))
        workspace.engine.dispose()
    print(f"estimate / actual: {', '.join(f'{r:.2f}' for r in ratios)} (target 0.5-2)")


if __name__ == "__main__":
    main()
