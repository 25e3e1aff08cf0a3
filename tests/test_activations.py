"""Real activations of a small trained network, and simulated coordinates of very negative bias.

The requirement: the fitted model's samples reproduce the data's per-coordinate
zero fractions within 0.02 and its co-exceedance rates within 0.05, and no
coordinate with a handful of positives is reported as plainly ok. Each data
set is fitted once (``fit_to_zarr``, default settings) from a Zarr array on
disk; the tests below check one part of the requirement each, and that the
model check's statistic, a quadratic form, is never negative. The network
trained on clustered inputs has units whose joint law is a mixture, which no
rectified Gaussian reproduces: there the checks must say so.
"""

from dataclasses import dataclass

import numpy as np
import pytest
import zarr

import dist_relu
from dist_relu import kernels
from dist_relu.model import predictive_check

pytestmark = pytest.mark.slow  # processes, services or statistical sweeps: not in `make test-fast`

N_SAMPLES = 240_000
INPUT_DIM = 16
HIDDEN = 32
ZERO_FRACTION_TOLERANCE = 0.02
COEXCEEDANCE_TOLERANCE = 0.05
# A coordinate with fewer positives than this must not be reported plainly ok: below it, the censored fit's
# nominal 95% intervals were measured to cover less than 93% of the time (its status is "few positives").
HANDFUL = kernels.min_positives("censored")
NEAR_DEAD = 10  # positives of a unit that is all but dead


# --------------------------------------------------------------------------
# A small network, trained in numpy
# --------------------------------------------------------------------------


def teacher_regression(seed):
    """Return a draw of ``(inputs, targets)``: Gaussian inputs and a fixed random nonlinear teacher's outputs."""
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((INPUT_DIM, 8)) / np.sqrt(INPUT_DIM)
    weights = rng.standard_normal(8)

    def draw(n, rng):
        inputs = rng.standard_normal((n, INPUT_DIM))
        targets = np.tanh(2 * inputs @ directions) @ weights + 0.5 * np.sin(3 * inputs[:, 0])
        return inputs, targets[:, None]

    return draw


def cluster_classification(seed, classes=4):
    """Return a draw of ``(inputs, one-hot labels)``: inputs from Gaussian clusters with a common covariance."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.5, (classes, INPUT_DIM))
    mixing = rng.standard_normal((INPUT_DIM, INPUT_DIM)) / np.sqrt(INPUT_DIM)

    def draw(n, rng):
        labels = rng.integers(classes, size=n)
        inputs = centres[labels] + rng.standard_normal((n, INPUT_DIM)) @ mixing.T
        return inputs, np.eye(classes)[labels]

    return draw


def squared_error_gradient(outputs, targets):
    return 2 * (outputs - targets) / len(outputs)


def cross_entropy_gradient(outputs, targets):
    shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True) - targets) / len(outputs)


def train_hidden_layer(draw, output_gradient, outputs, seed, steps=400, batch=128, learning_rate=0.3):
    """Return the hidden layer ``(W₁, b₁)`` of ``ReLU(x W₁ + b₁) W₂ + b₂`` trained by Adam on minibatches of ``draw``.

    He initialisation, zero biases. The learning rate is high enough that
    some units die during training, as they do in practice.
    """
    rng = np.random.default_rng(seed)
    parameters = [rng.normal(0, np.sqrt(2 / INPUT_DIM), (INPUT_DIM, HIDDEN)), np.zeros(HIDDEN),
                  rng.normal(0, np.sqrt(1 / HIDDEN), (HIDDEN, outputs)), np.zeros(outputs)]
    first_moments = [np.zeros_like(p) for p in parameters]
    second_moments = [np.zeros_like(p) for p in parameters]
    for step in range(1, steps + 1):
        inputs, targets = draw(batch, rng)
        hidden_weights, hidden_bias, output_weights, output_bias = parameters
        preactivation = inputs @ hidden_weights + hidden_bias
        hidden = np.maximum(preactivation, 0)
        gradient = output_gradient(hidden @ output_weights + output_bias, targets)
        hidden_gradient = gradient @ output_weights.T * (preactivation > 0)
        gradients = [inputs.T @ hidden_gradient, hidden_gradient.sum(axis=0), hidden.T @ gradient,
                     gradient.sum(axis=0)]
        for parameter, grad, first, second in zip(parameters, gradients, first_moments, second_moments):
            first *= 0.9
            first += 0.1 * grad
            second *= 0.999
            second += 0.001 * grad**2
            parameter -= learning_rate * (first / (1 - 0.9**step)) / (np.sqrt(second / (1 - 0.999**step)) + 1e-8)
    return parameters[0], parameters[1]


def network_activations(task, seed):
    """Return the trained hidden layer's ReLU activations (float32) on ``N_SAMPLES`` fresh inputs."""
    if task == "teacher":
        draw, gradient, outputs = teacher_regression(seed), squared_error_gradient, 1
    else:
        draw, gradient, outputs = cluster_classification(seed), cross_entropy_gradient, 4
    weights, bias = train_hidden_layer(draw, gradient, outputs, seed)
    inputs, _ = draw(N_SAMPLES, np.random.default_rng(seed + 1000))
    return np.maximum(inputs @ weights + bias, 0).astype(np.float32)


def simulated_with_very_negative_biases(seed=3):
    """Return ``ReLU(W z + b)`` samples (float32) at d = 32, six coordinates with ``b_i`` from −3σ_i to −5σ_i."""
    weights, bias = dist_relu.figure1_truth(HIDDEN, kappa=100, seed=seed, bias="gaussian")
    scale = np.linalg.norm(weights, axis=1)
    bias[:6] = -scale[:6] * np.array([3.0, 3.25, 3.5, 3.5, 4.0, 5.0])  # about 324, 139, 56, 56, 8, 0 positives
    z = np.random.default_rng(seed).standard_normal((N_SAMPLES, HIDDEN))
    return np.maximum(z @ weights.T + bias, 0).astype(np.float32)


# --------------------------------------------------------------------------
# One fit per data set
# --------------------------------------------------------------------------


@dataclass
class FittedData:
    """Data, its stored fit, and samples of the fitted model."""

    data: np.ndarray  # (n, d) float32
    model: dist_relu.RectifiedGaussian
    group: zarr.Group
    samples: np.ndarray  # (n, d), drawn from the fitted model

    @property
    def positives(self):
        return self.group["n_positive"][:]

    @property
    def thresholds(self):
        return self.group["thresholds"][:]


DATA_SETS = {
    "teacher network": lambda: network_activations("teacher", seed=16),
    "cluster network": lambda: network_activations("clusters", seed=14),
    "simulated": simulated_with_very_negative_biases,
}


@pytest.fixture(scope="module")
def fitted(request, tmp_path_factory):
    """The ``FittedData`` of the data set named by the test's parameter."""
    root = tmp_path_factory.mktemp("activations")
    data = DATA_SETS[request.param]()
    zarr.open_group(str(root / "data.zarr"), mode="w").create_array("samples", data=data, chunks=(60_000, HIDDEN))
    dist_relu.fit_to_zarr(root / "data.zarr", root / "fit.zarr")
    model, group = dist_relu.open_fit(root / "fit.zarr")
    return FittedData(data, model, group, model.sample(N_SAMPLES, seed=1))


def data_sets():
    """Return the parametrisation of ``fitted`` by every data set."""
    return pytest.mark.parametrize("fitted", list(DATA_SETS), indirect=True)


def coexceedance_rates(x, thresholds):
    """Return ``P(x_i > t_i, x_j > t_j)`` (d, d) in the rows of ``x``."""
    exceeds = (x > thresholds).astype(np.float64)
    return exceeds.T @ exceeds / len(x)


def stored_predictive_check(fitted):
    group = fitted.group
    n = group.attrs["n_samples"]
    return predictive_check(fitted.model, group["thresholds"][:], group["counts"][:], n, group["n_zero"][:] / n)


def describe(coordinates, fitted, **columns):
    """Return one line per coordinate: its positives, status and the given per-coordinate values."""
    status = fitted.group["status"][:]
    return "\n".join(f"coordinate {i}: {int(fitted.positives[i])} positives, {kernels.STATUS_NAMES[status[i]]}, "
                     + ", ".join(f"{name} {values[i]:.4g}" for name, values in columns.items())
                     for i in coordinates)


# --------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------


@data_sets()
def test_the_data_has_nearly_dead_units_and_the_fit_counted_them(fitted):
    positives = (fitted.data > 0).sum(axis=0)
    np.testing.assert_array_equal(fitted.positives, positives)
    assert (positives <= NEAR_DEAD).any(), sorted(positives)
    assert ((positives > NEAR_DEAD) & (positives < HANDFUL)).any(), sorted(positives)  # a handful
    np.testing.assert_array_equal(fitted.group["counts"][:],
                                  np.rint(coexceedance_rates(fitted.data, fitted.thresholds) * N_SAMPLES))


@data_sets()
def test_samples_of_the_fit_reproduce_the_zero_fractions(fitted):
    data_zero_fraction = (fitted.data == 0).mean(axis=0)
    model_zero_fraction = (fitted.samples == 0).mean(axis=0)
    error = np.abs(model_zero_fraction - data_zero_fraction)
    worst = np.argsort(error)[::-1][:5]
    assert error.max() <= ZERO_FRACTION_TOLERANCE, describe(worst, fitted, data=data_zero_fraction,
                                                             model=model_zero_fraction)
    assert stored_predictive_check(fitted).largest_zero_fraction_error <= ZERO_FRACTION_TOLERANCE


@pytest.mark.parametrize("fitted", ["teacher network", "simulated"], indirect=True)
def test_samples_of_the_fit_reproduce_the_coexceedance_rates(fitted):
    data_rates = coexceedance_rates(fitted.data, fitted.thresholds)
    model_rates = coexceedance_rates(fitted.samples, fitted.thresholds)
    error = np.abs(model_rates - data_rates)
    i, j = np.unravel_index(np.argmax(error), error.shape)
    assert error.max() <= COEXCEEDANCE_TOLERANCE, (
        f"pair ({i}, {j}): data {data_rates[i, j]:.4f}, model {model_rates[i, j]:.4f}; "
        f"{int((np.triu(error) > COEXCEEDANCE_TOLERANCE).sum())} pairs beyond {COEXCEEDANCE_TOLERANCE}")
    assert stored_predictive_check(fitted).largest_coexceedance_error <= COEXCEEDANCE_TOLERANCE


@pytest.mark.parametrize("fitted", ["cluster network"], indirect=True)
def test_where_no_rectified_gaussian_fits_the_checks_say_so(fitted):
    # Inputs from clusters make the pre-activations a mixture: units selective for different clusters have
    # ρ̂ near −0.8 pairwise, which no correlation matrix holds, and the repaired model cannot reproduce the
    # co-exceedances (0.069 off at the worst pair, units 11 and 18). The predictive check says so, as do the
    # positives' moments of the units checked.
    check = stored_predictive_check(fitted)
    assert check.largest_coexceedance_error > COEXCEEDANCE_TOLERANCE
    assert fitted.model.repair.relative_distance > 0.1
    status = fitted.group["status"][:]
    checked = np.isfinite(fitted.group["model_check"][:])
    assert np.count_nonzero(status[checked] == kernels.STATUS_NOT_NORMAL) > checked.sum() / 2, describe(
        np.flatnonzero(checked), fitted, statistic=fitted.group["model_check"][:])


@data_sets()
def test_the_predictive_check_of_the_stored_fit_is_what_its_samples_show(fitted):
    check = stored_predictive_check(fitted)
    # The check's model rates are the samples', within sampling noise (sqrt(p(1 − p)/n) ≤ 0.001).
    np.testing.assert_allclose(check.model_zero_fraction, (fitted.samples == 0).mean(axis=0), atol=0.005)
    np.testing.assert_allclose(check.model_coexceedance, coexceedance_rates(fitted.samples, fitted.thresholds),
                               atol=0.005)
    np.testing.assert_allclose(check.data_zero_fraction, (fitted.data == 0).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(check.data_coexceedance, coexceedance_rates(fitted.data, fitted.thresholds),
                               rtol=1e-12)


@data_sets()
def test_no_coordinate_with_a_handful_of_positives_is_reported_ok(fitted):
    status = fitted.group["status"][:]
    plainly_ok = np.flatnonzero((fitted.positives < HANDFUL) & (status == kernels.STATUS_OK))
    correlation_se = fitted.group["correlation_se"][:]
    np.fill_diagonal(correlation_se, 0.0)
    assert plainly_ok.size == 0, describe(plainly_ok, fitted, **{
        "entries of SE(ρ̂) above 0.5": (correlation_se > 0.5).sum(axis=1),
        "median SE(ρ̂)": np.median(correlation_se, axis=1)})


@data_sets()
def test_the_model_check_statistic_is_never_negative(fitted):
    # A quadratic form in the moments' differences: a negative value means its covariance is not
    # positive definite, and the coordinate passes the check whatever its positives look like.
    statistic = fitted.group["model_check"][:]
    assert np.isfinite(statistic).any()
    negative = np.flatnonzero(statistic < 0)
    assert negative.size == 0, describe(negative, fitted, statistic=statistic)
