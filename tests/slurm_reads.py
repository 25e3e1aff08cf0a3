"""A dask worker preload for tests/test_slurm.py: it logs each read of a Zarr chunk, and can make reads slow.

Loaded into every dask worker of a SLURM job through the environment
(``DASK_DISTRIBUTED__WORKER__PRELOAD``, which sbatch and srun pass on). Each
read of a chunk of an array (a key holding ``/c/``) of a local Zarr store is
appended as one line, ``STORE_ROOT KEY``, to ``reads-PID.txt`` in
``$DIST_RELU_TEST_READS``. ``$DIST_RELU_TEST_READ_DELAY`` seconds are added to
each such read (slow storage), so that a small fit lasts long enough for
SLURM's time limit to interrupt it.
"""

import asyncio
import os

import zarr.storage

LOG = os.path.join(os.environ["DIST_RELU_TEST_READS"], f"reads-{os.getpid()}.txt")
DELAY = float(os.environ.get("DIST_RELU_TEST_READ_DELAY") or 0)
# distributed imports a preload file and then reloads it, in the same namespace: keep the original once.
_original_get = getattr(zarr.storage.LocalStore, "_unlogged_get", zarr.storage.LocalStore.get)
zarr.storage.LocalStore._unlogged_get = _original_get


async def _logged_get(self, key, prototype, byte_range=None):
    if "/c/" in key:
        if DELAY:
            await asyncio.sleep(DELAY)
        with open(LOG, "a") as log:
            log.write(f"{self.root} {key}\n")
    return await _original_get(self, key, prototype, byte_range)


zarr.storage.LocalStore.get = _logged_get
