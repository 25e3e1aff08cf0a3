"""The failures dist_relu reports to its user, each with an exit code of the command line.

``InputError`` (exit 2): the input or the request cannot be served as given;
the message says what is wrong and what to do. ``EnvironmentProblem``
(exit 4): the machine stands in the way (a read-only or full file system,
a permission, an unreachable scheduler); the message names the path or
address. Anything else is an internal error (exit 3).
"""


import errno

# OS errors the user can act on: the machine, not the input or dist_relu, stands in the way.
ENVIRONMENT_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EMFILE,
                                errno.ENFILE})


class InputError(ValueError):
    """The input cannot be fitted: the message says what is wrong and what to do."""


class OutputBusy(InputError):
    """Another live process is writing the same output."""


class EnvironmentProblem(OSError):
    """The machine refuses what the command needs: the message names the path or address."""


class SchedulerLost(EnvironmentProblem):
    """The dask scheduler went away during a computation (stopped, or unreachable)."""


class Interrupted(KeyboardInterrupt):
    """The command was asked to stop by a signal (SIGINT, SIGTERM or SIGHUP): ``signal`` is its number.

    A ``KeyboardInterrupt``, so that dask's schedulers stop as they do for Ctrl-C.
    """

    def __init__(self, signal_number):
        super().__init__(signal_number)
        self.signal = signal_number
