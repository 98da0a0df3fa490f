"""A ``cadx worker`` for the job tests, run as a subprocess: ``python -m tests.job_worker_support DATA_DIR DB_URL
[--fold-sleep S] [--save-log FILE] [--idle-exit S] [--pid-file NAME] [--as-host NAME] [--hold-after N --release-file FILE]``.

``--fold-sleep`` makes every cross-validation fold sleep that long first (a deliberately slow fold, longer than the
stale limit the test sets); ``--save-log`` appends the unit of every checkpoint this worker saves, i.e. every unit
it computed itself (not the units it restored); ``--as-host`` makes the worker record another host name on the
jobs it claims, so that other processes on this machine judge its liveness by its heartbeat alone (the PID check
does not apply across hosts); ``--hold-after N`` holds the worker right after its N-th saved checkpoint
until ``--release-file`` exists (a job caught mid-run however fast the machine: the test acts, then releases
it). Everything else is the real worker (``cadx.workflows.jobs.run_worker``).
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir")
    parser.add_argument("database_url")
    parser.add_argument("--fold-sleep", type=float, default=0.0)
    parser.add_argument("--save-log")
    parser.add_argument("--idle-exit", type=float, default=3.0)
    parser.add_argument("--pid-file", default="worker.pid")
    parser.add_argument("--as-host")
    parser.add_argument("--hold-after", type=int)
    parser.add_argument("--release-file")
    args = parser.parse_args()

    import cadx.svm
    from cadx.workflows import jobs, open_workspace

    if args.fold_sleep > 0:
        real_fold = cadx.svm._run_fold

        def slow_fold(*a, **k):
            time.sleep(args.fold_sleep)
            return real_fold(*a, **k)

        cadx.svm._run_fold = slow_fold
    saved = []
    real_save = jobs._ScopedCheckpoints.save

    if args.hold_after is not None and not args.release_file:
        parser.error("--hold-after needs --release-file")

    def logged_save(self, unit, payload):
        real_save(self, unit, payload)
        saved.append(f"{self._prefix}{unit}")
        if args.save_log:
            with open(args.save_log, "a") as log:
                log.write(f"{self._prefix}{unit}\n")
        # held in the worker's own process, right after its N-th checkpoint: folds run in pool processes (loky)
        # never see a patch of this one, but every checkpoint is saved here, one at a time
        while args.hold_after is not None and len(saved) == args.hold_after and not os.path.exists(args.release_file):
            time.sleep(0.1)

    jobs._ScopedCheckpoints.save = logged_save
    if args.as_host:
        real_identity = jobs._identity

        def remote_identity():
            me = real_identity()
            return jobs._Identity(args.as_host, me.pid, me.started)

        jobs._identity = remote_identity
    workspace = open_workspace(args.data_dir, args.database_url)
    jobs.run_worker(workspace, poll_seconds=0.2, idle_exit_seconds=args.idle_exit, pid_file=args.pid_file)


if __name__ == "__main__":
    main()
