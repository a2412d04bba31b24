"""Checks for ``cluster=<choice>`` (configs/cluster), run by Hydra before any job is launched."""

import os
import shutil
import sys
from typing import Any

from hydra.experimental.callback import Callback


class SlurmReachable(Callback):
    """``cluster=slurm`` submits each job with ``sbatch``: where SLURM is not reachable, or without
    ``--multirun`` (which alone goes through the launcher), say so in one line before anything starts."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        if "LOCAL_RANK" in os.environ:  # a DDP process Lightning started again from the job's command line
            return
        sys.exit("Error: cluster=slurm submits jobs through Hydra's launcher, which --multirun alone uses: add it")

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        if shutil.which("sbatch") is None:
            sys.exit(
                "Error: SLURM is not reachable from here (no sbatch on PATH): run this on the cluster's login "
                "node, or use cluster=submitit_local to run the same jobs on this machine"
            )
