"""Inputs, outputs and checkpoints given as fsspec URLs, and what the task graph carries."""

import pickle

import fsspec
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import dist_relu
from dist_relu import io, storage
from dist_relu.cli import main


@pytest.fixture
def memory_root():
    root = f"memory://dist-relu-test-{np.random.default_rng().integers(1 << 30)}"
    yield root
    memory = fsspec.filesystem("memory")
    if memory.exists(root.removeprefix("memory://")):
        memory.rm(root.removeprefix("memory://"), recursive=True)


def test_simulate_fit_and_evaluate_on_memory_urls(memory_root, simulated):
    runner = CliRunner()
    sim, fit, checkpoint = f"{memory_root}/sim.zarr", f"{memory_root}/fit.zarr", f"{memory_root}/fit.checkpoint"
    assert runner.invoke(main, ["simulate", "--n", "100000", "--d", "5", "--out", sim, "--chunk-rows", "50000"]).exit_code == 0
    result = runner.invoke(main, ["fit", sim, "--out", fit, "--checkpoint", checkpoint])
    assert result.exit_code == 0, result.output
    # The same data on disk gives the same fit.
    path, _, _ = simulated(100_000, 5, seed=0, chunk_rows=50_000)
    on_disk = dist_relu.ReLUGaussian().fit(path)
    in_memory = zarr.open_group(fit, mode="r")
    np.testing.assert_array_equal(in_memory["covariance"][:], on_disk.covariance_)
    assert in_memory.attrs["source"] == sim
    # Refused without --overwrite, replaced with it; nothing partial is left beside it.
    assert runner.invoke(main, ["fit", sim, "--out", fit]).exit_code == 2
    assert runner.invoke(main, ["fit", sim, "--out", fit, "--overwrite"]).exit_code == 0
    names = fsspec.filesystem("memory").ls(memory_root.removeprefix("memory://"), detail=False)
    assert sorted(name.rsplit("/", 1)[-1] for name in names) == ["fit.checkpoint", "fit.zarr", "sim.zarr"]
    result = runner.invoke(main, ["evaluate", fit, "--truth", sim, "--json"])
    assert result.exit_code == 0 and "err_sigma" in result.output


def test_a_missing_url_is_a_clear_input_error(memory_root):
    with pytest.raises(io.InputError, match="no such file"):
        io.open_samples(f"{memory_root}/absent.zarr")


def test_the_graph_carries_the_array_handle_not_the_data(simulated):
    path, _, _ = simulated(200_000, 6, seed=5)
    samples = io.open_samples(f"file://{path}")
    graph_bytes = len(pickle.dumps(dict(samples.__dask_graph__())))
    # 4.8 MB of samples; what the client sends per chunk task is the zarr handle and an index.
    assert samples.nbytes == 200_000 * 6 * 4
    assert graph_bytes < 20_000, graph_bytes


def test_a_ctrl_c_during_the_commit_cannot_separate_its_two_moves(tmp_path, monkeypatch):
    import os
    import signal

    from fsspec.implementations.local import LocalFileSystem

    out = tmp_path / "out.zarr"
    zarr.create_group(str(out)).attrs.update({"which": "old", "format": storage.FIT_FORMAT})
    move = LocalFileSystem.mv
    moves = []

    def move_and_interrupt(self, source, target, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C between (and during) the moves
        moves.append(target)
        return move(self, source, target, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "mv", move_and_interrupt)
    # Ctrl-C's KeyboardInterrupt, as in a terminal (a shell's background job starts with SIGINT ignored).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with storage.atomic_output(out, storage.FIT_FORMAT, overwrite=True) as partial:
            zarr.create_group(str(partial)).attrs["which"] = "new"
        assert len(moves) == 2  # the old store moved aside, then the new one into place
        assert zarr.open_group(str(out), mode="r").attrs["which"] == "new"
        assert [p.name for p in tmp_path.iterdir()] == ["out.zarr"]
        # Outside the commit, Ctrl-C interrupts as before.
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)
