"""Which scheduler runs the graph, and computing with a progress bar on any of them."""

import contextlib
import sys

import dask
from dask.diagnostics import ProgressBar


@contextlib.contextmanager
def scheduler(address=None, workers=None, log=None):
    """Yield a ``distributed.Client`` for the chosen scheduler, or ``None`` for local threads.

    Parameters
    ----------
    address : str, optional
        Address of a running ``distributed`` scheduler (``tcp://host:port``).
    workers : int, optional
        Start a local cluster of this many single-threaded worker processes,
        bound to the loopback interface.
    log : callable, optional
        Called with one line naming the scheduler and its dashboard.
    """
    if address and workers:
        raise ValueError("give a scheduler address or a number of local workers, not both")
    if not address and not workers:
        yield None
        return
    from distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        if address:
            client = stack.enter_context(Client(address))
        else:
            # One thread per worker: BLAS under two threads per process was
            # erratic here, and workers pin BLAS to one thread anyway.
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True,
                    host="127.0.0.1", dashboard_address="127.0.0.1:0",
                )
            )
            client = stack.enter_context(Client(cluster))
        if log:
            log(f"scheduler {client.scheduler.address}, dashboard {client.dashboard_link}")
        yield client


def compute(*collections, progress=False):
    """Compute dask collections on the current scheduler; return their values as a tuple.

    Uses the default ``distributed`` client when there is one, else local
    threads. With ``progress`` a bar is drawn on stderr (dask's ProgressBar is
    silent under distributed, so the client's own progress bar is used there).
    """
    client = _default_client()
    if client is None:
        bar = ProgressBar(out=sys.stderr) if progress else contextlib.nullcontext()
        with bar:
            return dask.compute(*collections)
    futures = client.compute(list(collections))
    if progress:
        from distributed import progress as distributed_progress

        with contextlib.redirect_stdout(sys.stderr):
            distributed_progress(futures, multi=False)
            print(file=sys.stderr)
    return tuple(client.gather(futures))


def _default_client():
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None
