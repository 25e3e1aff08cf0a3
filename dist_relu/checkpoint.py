"""Checkpoints: the finished partial sums of a fit, kept so that an interrupted fit can resume.

A checkpoint is a directory (a local path or an fsspec URL that the workers
can reach) holding one ``.npy`` file per finished block of a partial sum:
``SCOPE/NAME/S.I.J.npy`` is the running sum of the block ``(I, J)`` over
the row chunks of segments ``0 … S`` (segments of ``split_every``
consecutive row chunks; with a jackknife, the segments of ``S``'s group
up to ``S``), so a rerun starts from the last one saved. Each file is written whole
under a temporary name and then renamed (on object stores, whose objects
appear whole, written in place), so a file that exists is complete.
``manifest.json`` records what the partial sums are of (the source, its shape,
dtype and chunking, the segment size, and the data's identity: the sizes and
modification times, or ETags, of its stored objects; see
``io.stored_data``), and ``thresholds.npy`` beside the sums the thresholds
they were counted at (and ``cut_points.npy`` the cut points, with more than
one a coordinate). A checkpoint made for other data or another chunking
is refused rather than mixed in.
"""

import io as _bytes_io
import json
import uuid

import numpy as np
from fsspec.implementations.local import LocalFileSystem

from .errors import InputError
from .storage import location

FORMAT = "dist_relu.checkpoint"
FORMAT_VERSION = 2  # 1 kept each segment's own sum


class Checkpoint:
    """Save and load finished blocks of partial sums under ``root`` (a path or URL)."""

    def __init__(self, url, scope="", resumed=None):
        self.url = str(url)
        self.scope = scope
        where = location(self.url)
        self.fs, self.root = where.fs, where.path
        # Blocks found already saved, over this checkpoint and its children.
        self.resumed = [0] if resumed is None else resumed

    @classmethod
    def open(cls, url, fingerprint):
        """Return the checkpoint at ``url``, created if absent; refuse one made for another ``fingerprint``."""
        checkpoint = cls(url)
        manifest = f"{checkpoint.root}/manifest.json"
        expected = {"format": FORMAT, "format_version": FORMAT_VERSION, **fingerprint}
        if checkpoint.fs.exists(manifest):
            try:
                found = json.loads(checkpoint.fs.cat_file(manifest))
            except ValueError as error:
                raise InputError(f"checkpoint {url}: its manifest.json cannot be read ({error}); give a new "
                                 "checkpoint directory") from None
            differ = sorted(key for key in expected.keys() | found.keys() if found.get(key) != expected.get(key))
            if differ:
                what = "other data" if "data" in differ or "source" in differ else "another fit"
                raise InputError(
                    f"checkpoint {url} was made for {what} (it differs in: {', '.join(differ)}); "
                    "give a new checkpoint directory, or remove this one to start over"
                )
        elif checkpoint.fs.exists(checkpoint.root) and checkpoint.fs.ls(checkpoint.root, detail=False):
            raise InputError(f"checkpoint {url} exists and is not a dist_relu checkpoint (no manifest.json); "
                             "give a new or empty directory")
        else:
            try:
                checkpoint._write_whole(manifest, json.dumps(expected, indent=2).encode())
            except FileNotFoundError as error:  # on an object store: no such bucket
                raise InputError(f"cannot write the checkpoint {url}: {error} (dist_relu creates no buckets)") from None
        return checkpoint

    def child(self, scope):
        """Return the same checkpoint with its files under the subdirectory ``scope``."""
        return Checkpoint(self.url, f"{self.scope}/{scope}" if self.scope else scope, self.resumed)

    def _path(self, name, index=None):
        folder = "/".join(part for part in (self.root, self.scope, name) if part)
        return folder if index is None else f"{folder}/{'.'.join(map(str, index))}.npy"

    def done(self, name):
        """Return the set of block indices of ``name`` saved so far (and count them as resumed)."""
        folder = self._path(name)
        if not self.fs.exists(folder):
            return set()
        done = set()
        for path in self.fs.ls(folder, detail=False):
            stem = path.rsplit("/", 1)[-1]
            if stem.endswith(".npy") and not stem.startswith("."):
                done.add(tuple(int(k) for k in stem[:-4].split(".")))
        self.resumed[0] += len(done)
        return done

    def bind(self, name, values):
        """Record the ``values`` (the thresholds or the cut points) the sums here are counted at, as ``NAME.npy``;
        raise ``InputError`` if others were recorded."""
        path = self._path(f"{name}.npy")
        if self.fs.exists(path):
            saved = np.load(_bytes_io.BytesIO(self.fs.cat_file(path)), allow_pickle=False)
            if not np.array_equal(saved, values):
                raise InputError(
                    f"checkpoint {self.url} holds sums counted at other {name.replace('_', ' ')}: the data's first "
                    "rows have changed since it was made; give a new checkpoint directory, or remove this one to "
                    "start over")
            return
        buffer = _bytes_io.BytesIO()
        np.save(buffer, np.asarray(values), allow_pickle=False)
        self._write_whole(path, buffer.getvalue())

    def load(self, name, index):
        """Return the saved block ``index`` of ``name``."""
        return np.load(_bytes_io.BytesIO(self.fs.cat_file(self._path(name, index))), allow_pickle=False)

    def save(self, name, index, block):
        """Save ``block`` as block ``index`` of ``name``, whole or not at all; return it."""
        buffer = _bytes_io.BytesIO()
        np.save(buffer, np.ascontiguousarray(block), allow_pickle=False)
        self._write_whole(self._path(name, index), buffer.getvalue())
        return block

    def _write_whole(self, path, data):
        if not isinstance(self.fs, LocalFileSystem):
            # An object appears whole when its upload completes; a move would be a copy and a delete more (and
            # makedirs on s3fs creates a missing bucket).
            self.fs.pipe_file(path, data)
            return
        folder, stem = path.rsplit("/", 1)
        self.fs.makedirs(folder, exist_ok=True)
        temporary = f"{folder}/.{stem}.{uuid.uuid4().hex[:8]}"
        self.fs.pipe_file(temporary, data)
        self.fs.mv(temporary, path)

    def __repr__(self):
        return f"Checkpoint({self.url!r}, scope={self.scope!r})"

    def __getstate__(self):
        # Tasks carry the checkpoint to the workers; the tally stays with the client.
        return {**self.__dict__, "resumed": None}
