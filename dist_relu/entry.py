"""The ``dist-relu`` program's entry point: interrupts are handled before anything heavy is imported.

SIGINT (Ctrl-C), SIGTERM (what SLURM and Kubernetes send at a time limit) and
SIGHUP raise ``errors.Interrupted`` in the main thread from the first moment,
so that an interrupt at any time, start-up included, ends in one line on
stderr and the exit code 128 + the signal's number, never a traceback.
"""

import contextlib
import os
import signal
import sys
import threading

from .errors import Interrupted

INTERRUPTS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def _interrupt(signal_number, frame):
    # The first interrupt ends the command; the ones after it are dropped, so that none cuts its cleanup or its
    # one line short (at a time limit SLURM signals every process, and fit.sbatch's trap passes it on again).
    for number in INTERRUPTS:
        signal.signal(number, signal.SIG_IGN)
    raise Interrupted(signal_number)


def install_interrupt_handlers():
    """Make SIGINT, SIGTERM and SIGHUP raise ``Interrupted`` in the main thread.

    A SIGHUP that is ignored already stays ignored: ``nohup dist-relu ...``
    asks for the command to outlive its terminal.
    """
    for number in INTERRUPTS:
        if number == getattr(signal, "SIGHUP", None) and signal.getsignal(number) == signal.SIG_IGN:
            continue
        signal.signal(number, _interrupt)


@contextlib.contextmanager
def interrupts_ignored():
    """Ignore SIGINT, SIGTERM and SIGHUP during the block (one received meanwhile is dropped).

    Only the main thread can set signal handlers; elsewhere the block runs
    unguarded.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, signal.SIG_IGN) for number in INTERRUPTS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def interrupted_exit(interrupt, what="no output was written"):
    """Print the one line of an interrupted command and exit with 128 + the signal's number."""
    number = getattr(interrupt, "signal", signal.SIGINT)
    print(f"interrupted by {signal.Signals(number).name}: {what}", file=sys.stderr)
    sys.exit(128 + number)


# As distributed's nanny does for its worker processes: dask's threads are the parallelism, so BLAS in each
# task runs on one thread (not one per core in every task at once). Settings in the environment win.
ONE_BLAS_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def run():
    """Run the command line, with interrupts handled from the start."""
    install_interrupt_handlers()
    for name, value in ONE_BLAS_THREAD.items():
        os.environ.setdefault(name, value)  # before numpy loads its BLAS
    try:
        from .cli import main
    except KeyboardInterrupt as interrupt:
        interrupted_exit(interrupt)
    try:
        main()
    finally:
        # The command has finished, or reported its interrupt: what is left is the interpreter's shutdown
        # (distributed's exit handlers among it), where a repeated signal (SLURM sends SIGTERM more than once
        # at a time limit) would only print a traceback.
        for number in INTERRUPTS:
            signal.signal(number, signal.SIG_IGN)
