"""Which scheduler runs the graph, and computing with a progress bar on any of them."""

import contextlib
import logging
import os
import sys
import time

import dask
from dask.base import named_schedulers
from dask.diagnostics import ProgressBar

from .entry import interrupts_ignored
from .errors import EnvironmentProblem, SchedulerLost


@contextlib.contextmanager
def scheduler(address=None, workers=None, log=None, tls_ca_file=None, tls_cert=None, tls_key=None):
    """Yield a ``distributed.Client`` for the chosen scheduler, or ``None`` for local threads.

    Parameters
    ----------
    address : str, optional
        Address of a running ``distributed`` scheduler (``tcp://host:port``,
        or ``tls://host:port`` for an encrypted one).
    workers : int, optional
        Start a local cluster of this many single-threaded worker processes,
        bound to the loopback interface.
    log : callable, optional
        Called with one line naming the scheduler and its dashboard.
    tls_ca_file, tls_cert, tls_key : str, optional
        PEM files for a ``tls://`` scheduler: the certificate authority, and
        this client's certificate and key. Without them the Dask config's
        ``distributed.comm.tls.*`` settings apply, as for any Dask client.
    """
    if address and workers:
        raise ValueError("give a scheduler address or a number of local workers, not both")
    tls_files = {"tls_ca_file": tls_ca_file, "tls_client_cert": tls_cert, "tls_client_key": tls_key}
    if any(tls_files.values()) and not (address or "").startswith("tls://"):
        raise ValueError("the TLS options are for a scheduler at a tls:// address (--scheduler tls://HOST:PORT)")
    if not address and not workers:
        yield None
        return
    from distributed import Client, LocalCluster
    from distributed.security import Security

    _drop_distributed_noise()
    with contextlib.ExitStack() as stack:
        if address:
            security = _security(address, tls_files, Security)
            try:
                client = stack.enter_context(Client(address, security=security))
            except (OSError, TimeoutError) as error:
                raise EnvironmentProblem(f"cannot reach the dask scheduler at {address}: {error}") from None
        else:
            # One thread per worker: BLAS under two threads per process was
            # erratic here, and workers pin BLAS to one thread anyway.
            # A terminal's Ctrl-C, a batch system's SIGTERM and a closed terminal's SIGHUP reach every
            # process of the group: each worker would print its own traceback, or die and be restarted
            # with warnings, before this process closes the cluster. Signals ignored while the workers
            # start stay ignored in them (POSIX keeps them across exec, and Python then installs no
            # handler of its own), so only this process answers; an interrupt during the start is dropped.
            with interrupts_ignored(), dask.config.set(_worker_environment()):
                cluster = stack.enter_context(
                    LocalCluster(
                        n_workers=workers, threads_per_worker=1, processes=True,
                        host="127.0.0.1", dashboard_address="127.0.0.1:0",
                        # The workers share this process's stderr. Closed after an interrupt while they run
                        # tasks, each logs a warning per task cancelled; errors still show.
                        silence_logs=logging.ERROR,
                    )
                )
            client = stack.enter_context(Client(cluster))
        if log:
            log(f"scheduler {client.scheduler.address}, dashboard {client.dashboard_link}")
        stack.enter_context(_quiet_when_interrupted())  # left first: before the client and cluster close
        yield client


# glibc's malloc then asks for transparent huge pages (where the kernel gives them on request, THP
# "madvise"), for the buffers zarr decompresses chunks into: a 128 MiB chunk's buffer is 64 page
# faults instead of 32,768, and a read at d = 4096 spent half its CPU in the kernel faulting them in
# (benchmarks/README.md). Read at a process's start, so it is for the workers this process starts;
# other C libraries ignore it.
WORKER_GLIBC_TUNABLES = "glibc.malloc.hugetlb=1"


def _worker_environment():
    """Return the Dask config that gives the worker processes of a local cluster ``WORKER_GLIBC_TUNABLES``.

    Set before the workers start (``distributed.nanny.pre-spawn-environ``);
    a ``GLIBC_TUNABLES`` in this process's environment wins, as distributed
    lets any variable there win over its config.
    """
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.setdefault("GLIBC_TUNABLES", WORKER_GLIBC_TUNABLES)
    return {"distributed.nanny.pre-spawn-environ": environ}


@contextlib.contextmanager
def _quiet_when_interrupted():
    """On an interrupt, or the scheduler's loss, silence distributed's logging while the client and cluster close.

    Closing a cluster whose tasks were cut short logs errors and tracebacks
    that say nothing to the user beyond "interrupted" (or "lost the scheduler").
    """
    try:
        yield
    except (KeyboardInterrupt, SchedulerLost):
        # asyncio: the client's gathers, cut short, are never retrieved. distributed's own configuration gives
        # some of its loggers levels of their own (distributed.client: warning), which the parent's does not
        # override: when a batch system stops the scheduler with the client (SLURM signals every step of the
        # job at once), distributed.client logs its failed reconnections, with tracebacks.
        names = [name for name in list(logging.root.manager.loggerDict) if name.startswith("distributed.")]
        for name in ("distributed", "asyncio", *names):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        raise


class _UnretrievedAllExit(logging.Filter):
    """Drop asyncio's "Task exception was never retrieved" for distributed's internal ``AllExit``."""

    def filter(self, record):
        error = record.exc_info[1] if record.exc_info else None
        return type(error).__name__ != "AllExit"


class _CancelBeforeStart(logging.Filter):
    """Drop tornado's traceback for distributed's ``sync`` cancelling a call that had not started.

    An interrupt that lands after ``sync`` queues its call and before the
    event loop starts it makes ``sync`` queue a ``cancel`` that reads the
    call's future before it exists: a ``NameError``, logged from the loop's
    thread (distributed 2026.8), with nothing left to cancel.
    """

    def filter(self, record):
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, NameError) and "sync.<locals>.cancel" in record.getMessage())


def _drop_distributed_noise():
    """Silence two tracebacks that distributed's client leaves when it is cut short, from threads of its own.

    When its scheduler goes away during a gather (SLURM signals every step of
    a job at once at its time limit), each future's waiter raises ``AllExit``
    and all but one are never retrieved: asyncio logs each one's traceback
    before the client hears of an interrupt. And an interrupt in a narrow
    window of ``distributed.utils.sync`` makes tornado log a ``NameError``
    (see ``_CancelBeforeStart``). The command's own line says what happened.
    """
    for logger_name, noise in (("asyncio", _UnretrievedAllExit), ("tornado.application", _CancelBeforeStart)):
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, noise) for f in logger.filters):
            logger.addFilter(noise())


def _security(address, tls_files, Security):
    """Return the ``Security`` for ``address``: the TLS files given, else the Dask config's."""
    if not address.startswith("tls://"):
        return None
    given = {name: value for name, value in tls_files.items() if value}
    for name, value in given.items():
        if not os.path.isfile(value):
            raise ValueError(f"{name.replace('_client', '').replace('_', '-')}: no such file: {value}")
    security = Security(require_encryption=True, **given)
    if not security.tls_ca_file:
        raise ValueError(
            f"{address} needs TLS certificates: give --tls-ca-file, --tls-cert and --tls-key, or set "
            "distributed.comm.tls.ca-file, .client.cert and .client.key in the Dask config"
        )
    return security


def compute(*collections, progress=False):
    """Compute dask collections on the current scheduler; return their values as a tuple.

    Uses the default ``distributed`` client when there is one, else local
    threads. With ``progress`` a bar is drawn on stderr (dask's ProgressBar is
    silent under distributed, so the client's own progress bar is used there).
    """
    client = current_client()
    if client is None:
        bar = ProgressBar(out=sys.stderr) if progress else contextlib.nullcontext()
        with bar:
            return dask.compute(*collections, scheduler=_local_scheduler())
    futures = client.compute(list(collections))
    try:
        if progress:
            from distributed import progress as distributed_progress

            with contextlib.redirect_stdout(sys.stderr):
                distributed_progress(futures, multi=False)
                print(file=sys.stderr)
        return tuple(client.gather(futures))
    except Exception as error:
        if not _scheduler_lost(client, error):
            raise
        # A batch system stops the whole job at once (SLURM at a time limit signals every step): the
        # scheduler can be gone a moment before this process's own SIGTERM arrives. Wait for it, so that
        # the command ends as interrupted (the interrupt is raised from the sleep) and not as failed.
        time.sleep(float(os.environ.get("DIST_RELU_LOST_SCHEDULER_GRACE", LOST_SCHEDULER_GRACE)))
        raise SchedulerLost(f"lost the dask scheduler at {client.scheduler.address} during the computation: "
                            "it stopped, or cannot be reached") from error


# Seconds to wait, after the scheduler's loss, for an interrupt that may come with it; the environment
# variable DIST_RELU_LOST_SCHEDULER_GRACE sets another (deploy/README.md).
LOST_SCHEDULER_GRACE = 2.0


def _scheduler_lost(client, error):
    """Return whether ``error``, raised while computing on ``client``, means that the scheduler went away."""
    from concurrent.futures import CancelledError

    from distributed.comm import CommClosedError

    if not isinstance(error, (CancelledError, CommClosedError, OSError)):
        return False
    return client.status != "running" or "scheduler-connection-lost" in str(error) or isinstance(
        error, CommClosedError)


def _local_scheduler():
    """Return the local scheduler's function: the Dask config's (``DASK_SCHEDULER``), else threads.

    Given as a function, so that dask does not import ``distributed`` to look
    for a client (``current_client`` found none).
    """
    name = dask.config.get("scheduler", None) or "threads"
    return named_schedulers.get(name, name) if isinstance(name, str) else name


def current_client():
    """Return the default ``distributed.Client``, or ``None`` when the fit runs on local threads."""
    if "distributed" not in sys.modules:
        return None  # no client can exist, and importing distributed would cost time
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None
