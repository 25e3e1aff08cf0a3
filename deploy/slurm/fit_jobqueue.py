#!/usr/bin/env python
"""Start dask workers as SLURM jobs with dask-jobqueue and run `dist-relu fit` on them.

The scheduler runs inside this script, so run it on a login node or in a small
allocation (see fit_jobqueue.sbatch). The worker jobs read SAMPLES and write OUT
themselves: both must be on a file system every node sees (or an object store URL).

    python deploy/slurm/fit_jobqueue.py /shared/sim.zarr /shared/fit.zarr --jobs 3
"""

import argparse
import subprocess
import sys
from pathlib import Path

import dask.config
import yaml

HERE = Path(__file__).resolve().parent


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples", help="Zarr store of the samples, on shared storage")
    parser.add_argument("out", help="Zarr group to create for the fit, on shared storage")
    parser.add_argument("--jobs", type=int, default=2, help="SLURM worker jobs to submit (default: 2)")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint directory on shared storage (default: OUT.checkpoint)")
    parser.add_argument("--config", default=str(HERE / "jobqueue.yaml"),
                        help="dask-jobqueue settings (default: jobqueue.yaml beside this script)")
    parser.add_argument("--wait-timeout", type=float, default=1800,
                        help="seconds to wait for the first worker (default: 1800)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    checkpoint = args.checkpoint or f"{args.out}.checkpoint"
    with open(args.config) as file:
        dask.config.update(dask.config.config, yaml.safe_load(file), priority="new")

    from dask_jobqueue import SLURMCluster

    with SLURMCluster() as cluster:
        print(cluster.job_script(), file=sys.stderr)
        cluster.scale(jobs=args.jobs)
        print(f"scheduler {cluster.scheduler_address}, dashboard {cluster.dashboard_link}", file=sys.stderr)
        cluster.wait_for_workers(1, timeout=args.wait_timeout)
        command = ["dist-relu", "fit", args.samples, "--out", args.out,
                   "--scheduler", cluster.scheduler_address, "--checkpoint", checkpoint]
        return subprocess.run(command).returncode


if __name__ == "__main__":
    sys.exit(main())
