"""A real one-node SLURM cluster for the tests, on the loopback interface.

Debian packages a complete SLURM. ``ensure_installed`` installs it (with
munge) when its programs are missing and we are root with apt-get. A
``SlurmCluster`` writes a configuration of its own into a temporary directory
(its own munge key and socket, its own ports, state, spool and logs; nothing
under /etc is read or changed), starts munged, slurmctld and slurmd as child
processes (there is no systemd), waits for the node to be idle, and at the end
cancels every job and stops the three daemons. Where SLURM cannot be installed
or started, ``Unavailable`` says why, and the tests using it are skipped with
that reason.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel")
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")
POLICY_RC = Path("/usr/sbin/policy-rc.d")

# The node offers more CPUs than this 2-core machine has (SlurmdParameters=config_overrides), so that a
# scheduler task and two worker tasks, or a driver and two worker jobs, fit side by side.
CPUS = 4
REAL_MEMORY_MB = 8192


class Unavailable(Exception):
    """SLURM cannot be installed or started here; the message says why."""


def program(name):
    return shutil.which(name) or next((f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None)


def missing_programs():
    return [name for name in PROGRAMS if program(name) is None]


def ensure_installed(timeout=600):
    """Install Debian's SLURM and munge if their programs are missing; raise ``Unavailable`` if that fails.

    Returns the seconds the installation took (0 when nothing was missing).
    The packages' own services are not started: a ``policy-rc.d`` that
    forbids it is put in place for the installation (and removed after) when
    the machine has none.
    """
    missing = missing_programs()
    if not missing:
        return 0.0
    if os.geteuid() != 0:
        raise Unavailable(f"SLURM is not installed ({', '.join(missing)} missing) and installing it needs root")
    if shutil.which("apt-get") is None:
        raise Unavailable(f"SLURM is not installed ({', '.join(missing)} missing) and there is no apt-get")
    start = time.monotonic()
    added_policy = not POLICY_RC.exists()
    if added_policy:
        POLICY_RC.write_text("#!/bin/sh\n# dist_relu tests: no service starts during the installation\nexit 101\n")
        POLICY_RC.chmod(0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for command in (["apt-get", "update", "-qq"],
                        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
            try:
                result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise Unavailable(f"`{' '.join(command)}` did not finish in {timeout} s") from None
            if result.returncode != 0:
                tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
                raise Unavailable(f"`{' '.join(command)}` failed ({result.returncode}): {' | '.join(tail)}")
    finally:
        if added_policy:
            POLICY_RC.unlink(missing_ok=True)
    missing = missing_programs()
    if missing:
        raise Unavailable(f"installed {', '.join(PACKAGES)} but {', '.join(missing)} still missing")
    return time.monotonic() - start


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_record(line):
    """``scontrol show -o`` output: KEY=VALUE words (a value runs to the next KEY=) into a dict."""
    record, key = {}, None
    for word in line.split(" "):
        name, sep, value = word.partition("=")
        if sep and name and name.replace("/", "").replace(":", "").replace("_", "").isalnum():
            key = name
            record[key] = value
        elif key is not None:
            record[key] += " " + word
    return record


class SlurmCluster:
    """munged, slurmctld and slurmd for one node named after this host, at 127.0.0.1, configured under ``root``."""

    def __init__(self, root):
        self.root = Path(root)
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.processes = {}
        self.logs = {}

    # -----------------------------------------------------------------------------------------------------------
    # Configuration

    def write_configuration(self, kill_wait=30):
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        log = self.root / "log"
        self.conf.write_text(f"""\
# A one-node SLURM on the loopback interface, written by tests/slurm_cluster.py
ClusterName=distrelutest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={self.root / 'state'}
SlurmdSpoolDir={self.root / 'spool'}
SlurmctldPidFile={self.root / 'slurmctld.pid'}
SlurmdPidFile={self.root / 'slurmd.pid'}
SlurmctldLogFile={log / 'slurmctld.log'}
SlurmdLogFile={log / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
# Time limits are enforced by slurmctld's check every 30 s; then SIGTERM, and SIGKILL KillWait s later.
KillWait={kill_wait}
OverTimeLimit=0
InactiveLimit=0
MinJobAge=3600
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory={REAL_MEMORY_MB} State=UNKNOWN
PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    def env(self, base=None, **extra):
        """The environment of a SLURM command: ``base`` (default os.environ) with SLURM_CONF set."""
        return {**(os.environ if base is None else base), "SLURM_CONF": str(self.conf), **extra}

    # -----------------------------------------------------------------------------------------------------------
    # Daemons

    def _spawn(self, name, argv):
        out = open(self.root / "log" / f"{name}.stdio", "ab")
        self.logs[name] = self.root / "log" / f"{name}.stdio"
        # A session of its own: a Ctrl-C or a signal to the test run's process group does not reach the daemons.
        self.processes[name] = subprocess.Popen(argv, env=self.env(), stdin=subprocess.DEVNULL, stdout=out,
                                                stderr=subprocess.STDOUT, start_new_session=True)
        out.close()

    def _check_alive(self):
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise Unavailable(f"{name} exited with {process.returncode} at start: {self.tail(name)}")

    def tail(self, name, lines=5):
        paths = [self.root / "log" / f"{name}.log", self.root / "log" / f"{name}.stdio"]
        text = "\n".join(p.read_text(errors="replace") for p in paths if p.exists())
        return " | ".join(text.strip().splitlines()[-lines:])

    def start(self, timeout=90, kill_wait=30):
        """Configure and start the daemons; return once the node is idle. Raise ``Unavailable`` otherwise."""
        if missing_programs():
            raise Unavailable(f"{', '.join(missing_programs())} missing")
        self.write_configuration(kill_wait=kill_wait)
        try:
            self._spawn("munged", [program("munged"), "--foreground", "--force",
                                   f"--socket={self.munge_socket}",
                                   f"--key-file={self.root / 'munge' / 'munge.key'}",
                                   f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                                   f"--seed-file={self.root / 'munge' / 'munged.seed'}",
                                   f"--log-file={self.root / 'log' / 'munged.log'}"])
            self._wait("munged's socket", lambda: self.munge_socket.exists(), timeout)
            self._spawn("slurmctld", [program("slurmctld"), "-D", "-c", "-i"])
            self._spawn("slurmd", [program("slurmd"), "-D", "-c", "-N", self.node])
            self._wait(f"node {self.node} to be idle", lambda: self.node_state() == "idle", timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, what, ready, timeout):
        deadline = time.monotonic() + timeout
        while not ready():
            self._check_alive()
            if time.monotonic() > deadline:
                names = [n for n in ("slurmctld", "slurmd", "munged") if n in self.processes]
                raise Unavailable(f"no {what} after {timeout} s; " + "; ".join(f"{n}: {self.tail(n, 2)}" for n in names))
            time.sleep(0.2)

    def node_state(self):
        result = self.run("sinfo", "-h", "-N", "-n", self.node, "-o", "%T", check=False)
        return result.stdout.strip() if result.returncode == 0 else None

    def stop(self, timeout=60):
        """Cancel every job, wait for them to end, and stop slurmd, slurmctld and munged."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--user", "root", check=False)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                result = self.run("squeue", "-h", "-o", "%i", check=False)
                if result.returncode != 0 or not result.stdout.strip():
                    break
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    # -----------------------------------------------------------------------------------------------------------
    # Commands

    def run(self, *argv, env=None, cwd=None, check=True, timeout=60):
        result = subprocess.run([program(argv[0]) or argv[0], *argv[1:]], env=self.env(env), cwd=cwd,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def sbatch(self, *argv, env=None, cwd=None):
        """Submit a batch job; return its id."""
        result = self.run("sbatch", "--parsable", *argv, env=env, cwd=cwd)
        return int(result.stdout.strip().split(";")[0])

    def job(self, job_id):
        """The job's record from ``scontrol show job``, as a dict (JobState, Reason, ExitCode, RunTime...)."""
        result = self.run("scontrol", "show", "job", "-o", str(job_id))
        return parse_record(result.stdout.strip())

    def wait_for_job(self, job_id, timeout, states=("COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL",
                                                    "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE")):
        """Wait until the job is in one of ``states`` and has finished completing; return its record."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.job(job_id)
            if record.get("JobState") in states:
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {record.get('JobState')} after {timeout} s: {record}")
            time.sleep(0.5)
