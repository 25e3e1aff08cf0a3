"""The paper's Step 1, kept faithful: NormBiasEst by projected SGD (Algorithms 2 and 3).

Kernels only (numpy and scipy); ``graph.sgd_estimates`` chains them over row
chunks. docs/design.md §2 states the algorithm. For each coordinate, the positives
are standardised by a mean ``µ0`` and standard deviation ``s0``, so the
truncation point becomes ``−µ0/s0``. ``B`` bootstrap batches (contiguous row
ranges) each run projected SGD on ``v = [1/σ², µ/σ²]`` from ``v = [1, 0]``:

- minibatches of 10 positives;
- gradient ``g = [½·mean(x²) − ½·mean(z²), mean(z) − mean(x)]``, with ``z``
  fresh draws from the current truncated normal;
- step ``v ← v − g/(λt)``, then projection onto ``1/r ≤ v1 ≤ r, |v2| ≤ r``;
- the iterates are averaged.

The batch estimate with the least summed distance to the others is chosen and
mapped back: ``σ² = s0²/v1``, ``µ = µ0 + v2·s0/v1``.

The state carries the positives left over from the previous chunk (fewer than
a minibatch), so minibatches are the same on any row chunking. The draws come
from a counter-based generator keyed by ``(seed, batch, coordinate)`` and
counted by draw number (SplitMix64). They are therefore the same on any
chunking, column blocking and scheduler.
"""

import numpy as np
from scipy import special

_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x):
    """Return the SplitMix64 output mix of uint64 ``x`` (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x + _GAMMA
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def stream_keys(seed, batch, coordinates):
    """Return one uint64 key per coordinate for the draws of ``(seed, batch)``."""
    base = _splitmix64(_splitmix64(np.uint64(seed)) ^ np.uint64(batch))
    with np.errstate(over="ignore"):
        return _splitmix64(base + np.asarray(coordinates, dtype=np.uint64))


def uniforms(keys, counters):
    """Return uniforms in (0, 1): draw number ``counters`` of the streams ``keys`` (broadcast)."""
    with np.errstate(over="ignore"):
        state = np.asarray(keys, dtype=np.uint64) + np.asarray(counters, dtype=np.uint64) * _GAMMA
    return ((_splitmix64(state) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def truncated_normal_draws(mean, sd, lower, u):
    """Return draws of ``N(mean, sd²)`` truncated to ``(lower, ∞)`` by inverse CDF of uniforms ``u``.

    ``z = mean − sd·Φ⁻¹(u·Φ(−α))`` with ``α = (lower − mean)/sd``, evaluated in
    log space (``ndtri_exp``), so it stays exact far in the upper tail, where
    ``Φ(−α)`` underflows, and never rejects.
    """
    alpha = (lower - mean) / sd
    return mean - sd * special.ndtri_exp(np.log(u) + special.log_ndtr(-alpha))


def initial_state(coordinates, batch, seed):
    """Return the ProjSGD state of a column block before its first chunk."""
    d = len(coordinates)
    return {
        "v": np.tile([1.0, 0.0], (d, 1)),
        "v_sum": np.zeros((d, 2)),
        "steps": np.zeros(d, dtype=np.int64),
        "leftover": [np.empty(0) for _ in range(d)],
        "keys": stream_keys(seed, batch, coordinates),
    }


def advance(state, x, mean0, sd0, radius=3.0, step_scale=0.1, minibatch=10, keep=None):
    """Return the state after running ProjSGD over the positives of chunk ``x`` (rows, d_block).

    Parameters
    ----------
    state : dict
        From ``initial_state`` or a previous ``advance``.
    x : ndarray, shape (rows, d_block)
    mean0, sd0 : ndarray, shape (d_block,)
        Standardisation of each coordinate's positives.
    radius, step_scale, minibatch : float, float, int
        ``r``, ``λ`` and the minibatch size of Algorithm 3.
    keep : ndarray of bool, shape (rows,), optional
        The rows to use; all by default.
    """
    if keep is not None:
        x = x[keep]
    state = {**state, "v": state["v"].copy(), "v_sum": state["v_sum"].copy(), "steps": state["steps"].copy()}
    d = x.shape[1]
    lower = -mean0 / sd0
    batches, leftover = [], []
    for i in range(d):
        column = x[:, i]
        positives = np.concatenate([state["leftover"][i], (column[column > 0] - mean0[i]) / sd0[i]])
        full = positives.size // minibatch * minibatch
        batches.append(positives[:full].reshape(-1, minibatch))
        leftover.append(positives[full:])
    state["leftover"] = leftover
    n_steps = np.array([b.shape[0] for b in batches])
    if n_steps.max(initial=0) == 0:
        return state
    # Minibatch means of x and x², padded to the longest coordinate.
    mean_x = np.zeros((d, n_steps.max()))
    mean_x2 = np.zeros((d, n_steps.max()))
    for i, b in enumerate(batches):
        mean_x[i, : len(b)] = b.mean(axis=1)
        mean_x2[i, : len(b)] = (b * b).mean(axis=1)

    v, v_sum, steps, keys = state["v"], state["v_sum"], state["steps"], state["keys"]
    draw = np.arange(minibatch, dtype=np.uint64)
    for m in range(n_steps.max()):
        active = m < n_steps
        t = steps + 1
        mean, sd = v[:, 1] / v[:, 0], 1 / np.sqrt(v[:, 0])
        u = uniforms(keys[:, None], (steps.astype(np.uint64) * np.uint64(minibatch))[:, None] + draw)
        z = truncated_normal_draws(mean[:, None], sd[:, None], lower[:, None], u)
        gradient = np.stack([0.5 * mean_x2[:, m] - 0.5 * (z * z).mean(axis=1), z.mean(axis=1) - mean_x[:, m]], axis=1)
        new = v - gradient / (step_scale * t[:, None])
        new[:, 0] = np.clip(new[:, 0], 1 / radius, radius)
        new[:, 1] = np.clip(new[:, 1], -radius, radius)
        v = np.where(active[:, None], new, v)
        v_sum = v_sum + np.where(active[:, None], new, 0.0)
        steps = np.where(active, t, steps)
    state.update(v=v, v_sum=v_sum, steps=steps)
    return state


def central_batch(estimates):
    """Return the index of the estimate with the least summed distance to the others.

    ``estimates`` has shape (B, d, 2); the answer has shape (d,).
    """
    distances = np.linalg.norm(estimates[:, None] - estimates[None, :], axis=-1).sum(axis=1)
    return np.argmin(distances, axis=0)


def select_and_map_back(states, mean0, sd0):
    """Return ``(d_block, 2)``: ``(µ̂, σ̂)`` per coordinate from the final states of its batches.

    A coordinate with no complete minibatch in some batch gets NaN.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        averages = np.stack([s["v_sum"] / s["steps"][:, None] for s in states])  # (B, d, 2)
    chosen = averages[central_batch(np.nan_to_num(averages)), np.arange(averages.shape[1])]
    incomplete = np.any([s["steps"] == 0 for s in states], axis=0)
    v1, v2 = chosen[:, 0], chosen[:, 1]
    bias = mean0 + v2 * sd0 / v1
    scale = sd0 / np.sqrt(v1)
    bias[incomplete] = np.nan
    scale[incomplete] = np.nan
    return np.stack([bias, scale], axis=1)


def standardisation(statistics, exponents=None):
    """Return ``(µ0, s0)``: mean and standard deviation of each coordinate's positives, in the data's units.

    ``s0`` falls back to ``µ0`` (then to 1) where the positives do not vary,
    so that degenerate coordinates do not divide by zero. The sums of
    ``statistics`` are in units ``2**exponents`` (0 by default): both are
    found in those units and then multiplied by ``2**e``, exactly, so that
    no square of the data's scale is formed (it could overflow).
    """
    _, n1, s1, s2 = np.asarray(statistics, dtype=np.float64).T
    mean0 = s1 / np.maximum(n1, 1)
    sd0 = np.sqrt(np.maximum(s2 / np.maximum(n1, 1) - mean0**2, 0.0))
    sd0 = np.where(sd0 > 1e-12 * np.abs(mean0), sd0, np.where(mean0 > 0, mean0, 1.0))
    if exponents is not None:
        mean0, sd0 = np.ldexp(mean0, exponents), np.ldexp(sd0, exponents)
    return mean0, sd0


def with_degenerate(sgd_estimates, bias, scale, status):
    """Return ``(bias, scale)``: the SGD's, except where the statistics found a degenerate coordinate."""
    from .kernels import STATUS_ALL_ZERO, STATUS_CONSTANT

    degenerate = (status == STATUS_ALL_ZERO) | (status == STATUS_CONSTANT)
    return (np.where(degenerate, bias, sgd_estimates[:, 0]), np.where(degenerate, scale, sgd_estimates[:, 1]))
