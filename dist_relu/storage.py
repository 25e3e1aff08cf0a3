"""Where dist_relu reads and writes: locations, and outputs that appear whole, one writer at a time.

The rule for deleting: dist_relu removes only what it wrote itself. An
existing output is replaced only when asked (``overwrite``) and only when it
is a previous output of the same kind, recognised by its ``format``
attribute; never the input (a location that is, contains or lies inside an
input), never anything else, never the working directory.

Every output is written by ``atomic_output``:

- it takes the output's lock, ``.NAME.lock`` beside it, created exclusively.
  The lock says who writes (host, process, its start time) and until when (a
  lease renewed while the writer lives). A second writer of the same path is
  refused while the first lives; a lock whose writer is dead (same host) or
  whose lease has run out (another host) is taken over;
- holding the lock, it cleans what a hard-killed writer left (its hidden
  ``.NAME.partial-*`` store, or the previous output moved aside in a commit
  cut short, which is put back);
- the output is written into ``.NAME.partial-TOKEN`` and renamed into place
  only once complete.

A single file (a report) is written the same way by ``write_file``; it names
its format in its first bytes (``REPORT_MARK``), as a store does in its
attributes.

Object stores (``s3://``, ``gs://``) have no rename and no directories. There
the finished store is copied into place object by object (``_copy_into_place``),
under a marker ``.NAME.commit-TOKEN`` written first: the group's root metadata
is removed first and copied last, so that the group cannot be opened while it
is a mixture of old and new objects, and a commit cut short by a hard kill is
finished by the next writer, under the lock, from the complete partial store.
Buckets are never created. The lock is created with a conditional write
(``If-None-Match``) and read back, for servers that ignore the condition.
"""

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .entry import interrupts_ignored
from .errors import ENVIRONMENT_ERRNOS, EnvironmentProblem, InputError, OutputBusy

log = logging.getLogger("dist_relu")

FIT_FORMAT = "dist_relu.fit"
SAMPLES_FORMAT = "dist_relu.samples"
CHECKPOINT_FORMAT = "dist_relu.checkpoint"
REPORT_FORMAT = "dist_relu.report"
# A file output names its format in its first bytes: a report's HTML head holds this line.
REPORT_MARK = f'<meta name="format" content="{REPORT_FORMAT}">'
_FILE_HEAD = 1024
# Stores written before outputs carried a format attribute name their writer instead.
_LEGACY_FORMATS = {("generator", "dist_relu.simulate"): SAMPLES_FORMAT,
                   ("converted_by", "dist_relu.convert"): SAMPLES_FORMAT}
_KIND_NAMES = {FIT_FORMAT: "dist_relu fit", SAMPLES_FORMAT: "dist_relu samples store",
               REPORT_FORMAT: "dist_relu report"}

# A lock's lease: renewed every LEASE/4 while its writer lives; a lock from another
# host whose lease ran out LEASE ago is stale.
LEASE_SECONDS = 120.0


@dataclass(frozen=True)
class Location:
    """A local path or fsspec URL, parsed once: its file system and the path on it."""

    text: str  # as the user gave it
    fs: fsspec.AbstractFileSystem
    path: str  # absolute, without a trailing slash; symlinks resolved on a local disk

    @property
    def is_local(self):
        return isinstance(self.fs, LocalFileSystem)

    @property
    def protocol(self):
        protocol = self.fs.protocol
        return protocol if isinstance(protocol, str) else protocol[0]

    @property
    def url(self):
        """What zarr and fsspec open: the path on a local disk, else the full URL."""
        return self.path if self.is_local else self.fs.unstrip_protocol(self.path)

    @property
    def name(self):
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self):
        return self.path.rsplit("/", 1)[0] or "/"

    def sibling(self, name):
        """Return the path (on ``fs``) of ``name`` beside this location."""
        return f"{self.parent.rstrip('/')}/{name}"

    def exists(self):
        return self.fs.exists(self.path)

    def overlaps(self, other):
        """Return whether this location is ``other``, lies inside it, or contains it."""
        return self.within(other) or other.within(self)

    def within(self, other):
        """Return whether this location is ``other`` or lies inside it."""
        return self.protocol == other.protocol and (self.path == other.path or
                                                    self.path.startswith(other.path.rstrip("/") + "/"))

    def __str__(self):
        return self.text


def location(text):
    """Return the ``Location`` of a local path or an fsspec URL (``file://``, ``memory://``, ``s3://``, ``gs://``)."""
    if isinstance(text, Location):
        return text
    text = os.fspath(text)
    if not text:
        raise InputError("an empty path was given")
    try:
        fs, path = fsspec.core.url_to_fs(text)
        if not isinstance(fs, LocalFileSystem):
            # Workers and other writers change the store behind this process's back: every decision made
            # here (exists, the leftovers, what to copy) must list it afresh, not from fsspec's listing cache.
            fs, path = fsspec.core.url_to_fs(text, use_listings_cache=False)
    except ImportError as error:
        scheme = text.split("://", 1)[0]
        raise InputError(f"{text}: {scheme}:// needs a library that is not installed ({error})") from None
    except ValueError as error:
        raise InputError(f"{text}: not a path or URL dist_relu can open ({error})") from None
    if isinstance(fs, LocalFileSystem):
        path = os.path.realpath(path)
    return Location(text, fs, path.rstrip("/") or "/")


def output_format(where):
    """Return the format of the dist_relu output at ``where`` (a ``Location``), or None if it is none."""
    if where.fs.isfile(where.path):
        head = where.fs.cat_file(where.path, start=0, end=_FILE_HEAD)
        return REPORT_FORMAT if REPORT_MARK.encode() in head else None
    for metadata in ("zarr.json", ".zattrs"):
        try:
            document = json.loads(where.fs.cat_file(f"{where.path}/{metadata}"))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, ValueError):
            continue
        attributes = document.get("attributes", {}) if metadata == "zarr.json" else document
        if not isinstance(attributes, dict):
            return None
        if attributes.get("format") in (FIT_FORMAT, SAMPLES_FORMAT):
            return attributes["format"]
        for (key, value), kind in _LEGACY_FORMATS.items():
            if attributes.get(key) == value:
                return kind
        return None
    return None


def check_output(out, kind, inputs=(), overwrite=False):
    """Raise ``InputError`` unless dist_relu may write an output of ``kind`` at ``out``.

    ``out`` must not be, contain or lie inside any of ``inputs`` (the
    locations this command reads, or None), nor hold the working directory.
    An existing ``out`` is replaced only with ``overwrite`` and only if it is
    a dist_relu output of the same ``kind``.
    """
    out = location(out)
    for given in inputs:
        if given is None:
            continue
        given = location(given)
        if out.overlaps(given):
            how = "is" if out.path == given.path else "lies inside" if out.within(given) else "contains"
            raise InputError(f"the output {out} {how} the input {given}: dist_relu never writes over what it "
                             "reads; choose another output")
    if out.is_local:
        working = location(os.getcwd())
        if working.within(out):
            raise InputError(f"the output {out} holds the working directory: choose a new path for the output")
    if out.path == "/" or "/" not in out.path.strip("/") and not out.is_local:
        raise InputError(f"{out}: give a path inside a directory or bucket, not a bucket or the root itself")
    pending = _pending_commit(out)
    if out.exists() or pending:
        if not overwrite:
            raise InputError(f"{out} exists; choose another --out or pass --overwrite")
        # A commit cut short leaves a mixture at ``out`` that the next writer completes: judge what it will be.
        found = output_format(pending or out)
        if found != kind:
            what = f"a {_KIND_NAMES[found]}" if found else "not an output of dist_relu"
            raise InputError(f"{out} exists and is {what}; --overwrite replaces only a previous "
                             f"{_KIND_NAMES[kind]} (dist_relu never deletes what it did not write): choose another "
                             "output")


@contextlib.contextmanager
def atomic_output(out, kind, inputs=(), overwrite=False):
    """Yield where to write a new output of ``kind``; move it to ``out`` once the block completes.

    Checks ``out`` with ``check_output``, takes its lock (``OutputBusy`` if
    another live process holds it) and cleans what an earlier, killed writer
    left. On an exception or a signal the partial output is removed and
    whatever was at ``out`` is untouched. The yielded location is a local
    ``Path`` on a disk, else a URL.
    """
    out = location(out)
    check_output(out, kind, inputs, overwrite)
    if out.is_local:
        out.fs.makedirs(out.parent, exist_ok=True)  # object stores have no directories (and s3fs would make a bucket)
    with _output_lock(out) as token:
        _clean_leftovers(out)
        check_output(out, kind, inputs, overwrite)  # again, now that no other writer can act
        partial = out.sibling(f".{out.name}.partial-{token}")
        try:
            yield Path(partial) if out.is_local else out.fs.unstrip_protocol(partial)
        except BaseException as error:
            # Removing the partial store is what an interrupt asks for: a second one meanwhile is dropped
            # (SLURM sends SIGTERM more than once at a time limit; cut short, the removal left a partial store).
            with interrupts_ignored():
                _remove_partial(out.fs, partial)
            if isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS and not error.filename:
                raise EnvironmentProblem(f"cannot write {out}: {error.strerror}") from error
            raise
        # Once the commit has begun the work is done: an interrupt meanwhile is dropped (on a disk, the two
        # moves must not be separated, or the old output is left aside and the new one hidden).
        if out.is_local:
            aside = out.sibling(f".{out.name}.old-{token}")
            with interrupts_ignored():
                if out.exists():
                    out.fs.mv(out.path, aside, recursive=True)
                out.fs.mv(partial, out.path, recursive=True)
            if out.fs.exists(aside):
                out.fs.rm(aside, recursive=True)
        else:
            marker = out.sibling(f".{out.name}.commit-{token}")
            with interrupts_ignored():
                out.fs.pipe_file(marker, partial.encode())  # from here on the partial store is complete
                _copy_into_place(out.fs, partial, out.path)
                out.fs.rm(marker)  # before the partial store: without its marker, a partial store is removed
            _remove_quietly(out.fs, partial)


def write_file(out, data, kind, inputs=(), overwrite=False):
    """Write the bytes ``data`` as the file ``out``, an output of ``kind`` that appears only whole.

    The file is written beside ``out`` under a hidden name and moved into
    place once complete (``atomic_output``, with its checks, its lock and
    its rules for ``overwrite``). ``data`` holds the mark of ``kind``
    (``REPORT_MARK``) in its first 1024 bytes, by which ``overwrite`` knows
    the file later.
    """
    with atomic_output(out, kind, inputs, overwrite) as partial:
        where = location(partial)
        where.fs.pipe_file(where.path, data)


# The metadata of a Zarr group's root: while it is absent, the group cannot be opened.
_ROOT_METADATA = ("zarr.json", ".zgroup", ".zattrs", ".zmetadata")


def _copy_into_place(fs, source, target):
    """Make the objects under ``target`` those under ``source`` (an object store's commit); rerunnable.

    The root metadata of the previous output goes first and the new one's
    comes last, so that between them the group cannot be opened, rather than
    be opened as a mixture of the two outputs. A single file is one object,
    replaced whole by one copy.
    """
    if fs.isfile(source):
        fs.copy(source, target)
        return
    new = sorted(path[len(source):] for path in fs.find(source))
    root = [f"/{name}" for name in _ROOT_METADATA]
    if not set(new) & set(root):
        raise FileNotFoundError(f"{source} holds no Zarr group: nothing to put in place of {target}")
    old = [path[len(target):] for path in fs.find(target)]
    gone = [f"{target}{name}" for name in old if name in root]
    if gone:
        fs.rm(gone)
    body = [name for name in new if name not in root]
    if body:
        fs.copy([f"{source}{name}" for name in body], [f"{target}{name}" for name in body])
    stale = [f"{target}{name}" for name in old if name not in new and name not in root]
    if stale:
        fs.rm(stale)
    last = [name for name in new if name in root]
    if last:
        fs.copy([f"{source}{name}" for name in last], [f"{target}{name}" for name in last])


def _pending_commit(out):
    """Return the complete partial store that a commit cut short was copying to ``out`` (object stores), or None."""
    if out.is_local:
        return None
    try:
        names = [path.rstrip("/").rsplit("/", 1)[-1] for path in out.fs.ls(out.parent, detail=False)]
    except FileNotFoundError:
        return None
    for name in sorted(names):
        if name.startswith(f".{out.name}.commit-"):
            partial = f".{out.name}.partial-{name.rsplit('-', 1)[-1]}"
            if partial in names:
                return location(out.fs.unstrip_protocol(out.sibling(partial)))
    return None


def _lock_record(token):
    import psutil

    return {"format": "dist_relu.lock", "host": socket.gethostname(), "pid": os.getpid(),
            "pid_started": psutil.Process().create_time(), "token": token,
            "expires": time.time() + LEASE_SECONDS}


def _writer_alive(record):
    """Return whether the writer a lock names may still be writing."""
    if record.get("host") != socket.gethostname():
        return time.time() < float(record.get("expires", 0))
    import psutil

    try:
        return abs(psutil.Process(int(record["pid"])).create_time() - float(record["pid_started"])) < 1.0
    except (psutil.NoSuchProcess, KeyError, ValueError, TypeError):
        return False
    except psutil.AccessDenied:
        return True


def _read_lock(fs, path):
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except ValueError:
        return {}  # being written, or damaged: judged by its age below


@contextlib.contextmanager
def _output_lock(out):
    """Hold the lock of ``out`` for the block; yield the writer's token."""
    fs, lock = out.fs, out.sibling(f".{out.name}.lock")
    token = uuid.uuid4().hex[:12]
    record = _lock_record(token)
    for _attempt in range(20):
        try:
            created = _create_exclusively(fs, lock, json.dumps(record).encode())
        except FileNotFoundError as error:  # on an object store: no such bucket
            raise InputError(f"cannot write {out}: {error} (dist_relu creates no buckets)") from None
        if created:
            break
        found = _read_lock(fs, lock)
        if found is None:
            continue  # released meanwhile
        if not found and _age(fs, lock) < 10:
            time.sleep(0.05)  # a lock being written by its writer
            continue
        if found and _writer_alive(found):
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(found["pid_started"]))
            raise OutputBusy(f"{out} is being written by another dist-relu (process {found['pid']} on "
                             f"{found['host']}, started {since}); wait for it, or choose another output")
        stale = out.sibling(f".{out.name}.lock.stale-{token}")
        try:
            fs.mv(lock, stale)  # of several takers, one moves it
        except (FileNotFoundError, OSError):
            continue
        fs.rm(stale)
        log.info(f"took over the lock of {out} left by a process that is gone ({lock})")
    else:
        raise OutputBusy(f"could not take the lock of {out} ({lock}); remove it if no dist-relu is writing there")
    stop = threading.Event()
    renewer = threading.Thread(target=_renew_lease, args=(fs, lock, record, stop), daemon=True)
    renewer.start()
    try:
        yield token
    finally:
        with interrupts_ignored():  # as for the partial store: a repeated interrupt must not leave the lock
            stop.set()
            renewer.join()
            if (_read_lock(fs, lock) or {}).get("token") == token:
                fs.rm(lock)


def _renew_lease(fs, lock, record, stop):
    while not stop.wait(LEASE_SECONDS / 4):
        try:
            _replace_whole(fs, lock, json.dumps({**record, "expires": time.time() + LEASE_SECONDS}).encode())
        except OSError:
            pass  # the next renewal tries again; the lease is long


def _create_exclusively(fs, path, data):
    """Create ``path`` holding ``data``; return False if it exists (atomic on a disk, checked after on stores)."""
    if isinstance(fs, LocalFileSystem):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        return True
    # Object stores: a conditional write (If-None-Match: *, honoured by AWS S3 and moto), then a read
    # back of whose lock stands, for servers that ignore the condition.
    if fs.exists(path):
        return False
    try:
        fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False
    return fs.cat_file(path) == data


def _replace_whole(fs, path, data):
    if isinstance(fs, LocalFileSystem):
        temporary = f"{path}.{uuid.uuid4().hex[:8]}"
        with open(temporary, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    else:
        fs.pipe_file(path, data)


def _age(fs, path):
    try:
        modified = fs.modified(path)
    except (FileNotFoundError, NotImplementedError, OSError):
        return 0.0
    return time.time() - modified.timestamp()


def _clean_leftovers(out):
    """Under the lock: remove the partial stores of dead writers, and finish or undo a commit cut short.

    Names sort so that a commit's marker (``commit-``) comes before the
    partial store it names, which is removed once the commit is finished.
    """
    fs = out.fs
    prefix = f".{out.name}."
    try:
        names = [path.rstrip("/").rsplit("/", 1)[-1] for path in fs.ls(out.parent, detail=False)]
    except FileNotFoundError:
        return
    for name in sorted(names):
        path = out.sibling(name)
        if not name.startswith(prefix):
            continue
        if name.startswith(prefix + "commit-"):
            partial = out.sibling(f"{prefix}partial-{name[len(prefix + 'commit-'):]}")
            if fs.exists(partial):
                log.info(f"finished the commit of {out} cut short by an interrupted run (from {partial})")
                _copy_into_place(fs, partial, out.path)
            _remove_quietly(fs, path)
        elif name.startswith(prefix + "old-"):
            if out.exists():
                log.info(f"removed the previous output of {out} left aside by an interrupted commit ({path})")
                _remove_quietly(fs, path)
            else:
                log.info(f"restored the previous output of {out} from an interrupted commit ({path})")
                fs.mv(path, out.path, recursive=True)
        elif name.startswith(prefix + "partial-"):
            log.info(f"removed a partial output left by an interrupted run ({path})")
            _remove_quietly(fs, path)


def _remove_partial(fs, path, settle=2.0, quiet=0.5):
    """Remove a partial store, and again while tasks still in flight recreate it.

    After an interruption, threads (or workers) finish the block they were
    writing, which can recreate the directory just removed; keep removing it
    until it has stayed away for ``quiet`` seconds, or ``settle`` have passed.
    """
    if not fs.exists(path):
        return  # nothing was written, so nothing is being written
    start = last_seen = time.monotonic()
    while time.monotonic() - start < settle:
        if fs.exists(path):
            _remove_quietly(fs, path)
            last_seen = time.monotonic()
        elif time.monotonic() - last_seen > quiet:
            return
        time.sleep(0.05)
    _remove_quietly(fs, path)


def _remove_quietly(fs, path):
    try:
        fs.rm(path, recursive=True)
    except (FileNotFoundError, OSError):
        pass  # removed meanwhile, or a file recreated during the walk: the next round removes it
