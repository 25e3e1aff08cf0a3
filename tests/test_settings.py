"""Each setting is declared once (dist_relu/settings.py): the class, the command line and the stored attributes follow."""

import inspect

import numpy as np
import pytest
from click.testing import CliRunner

import dist_relu
from dist_relu.cli import EXIT_BAD_INPUT, fit, main
from dist_relu.settings import OneLayerSettings, RandomBiasSettings, Spec, TwoLayerSettings

DECLARED = [(dist_relu.ReLUGaussian, *setting) for setting in OneLayerSettings.declared()]
DECLARED += [(dist_relu.TwoLayerReLU, *setting) for setting in TwoLayerSettings.declared()]
DECLARED += [(dist_relu.RandomBiasReLU, *setting) for setting in RandomBiasSettings.declared()]


@pytest.mark.parametrize("estimator, name, default, spec", DECLARED,
                         ids=[f"{estimator.__name__}-{name}" for estimator, name, _, _ in DECLARED])
def test_a_setting_is_a_parameter_of_the_class_and_an_option_of_the_command(estimator, name, default, spec):
    parameter = inspect.signature(estimator).parameters[name]
    assert parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.default == default
    assert f"{name} : " in estimator.__doc__
    (option,) = [p for p in fit.params if p.name == name]
    assert option.opts == ["--" + name.replace("_", "-")]
    assert option.default == default


def test_the_class_refuses_an_unknown_setting():
    with pytest.raises(TypeError, match="unknown setting.*colum_block"):
        dist_relu.ReLUGaussian(colum_block=4)


@pytest.mark.parametrize("spec, good, bad, message", [
    (Spec("", minimum=1, others=("auto",)), [1, 7, "auto", np.int64(3)], [0, "wide", 2.0, True],
     "an integer ≥ 1 or 'auto'"),
    (Spec("", minimum=1, maximum=2), [1, 2], [0, 3, True, 1.0], "1 or 2"),
    (Spec("", kind=float, minimum=1, open_minimum=True), [1.5, 3], [1, 0.5, "3"], "a number > 1"),
    (Spec("", kind=str, choices=("a", "b")), ["a", "b"], ["c", 1, None], "one of a, b"),
    (Spec("", kind=bool), [True, False, np.bool_(True)], [1, "yes"], "True or False"),
])
def test_a_spec_takes_what_it_declares_and_names_the_setting_otherwise(spec, good, bad, message):
    for value in good:
        spec.check("x", value)
    for value in bad:
        with pytest.raises(ValueError, match=f"x must be {message}"):
            spec.check("x", value)


def test_the_command_line_refuses_what_the_declaration_refuses(tmp_path):
    result = CliRunner().invoke(main, ["fit", str(tmp_path / "x.zarr"), "--out", str(tmp_path / "f.zarr"),
                                       "--sgd-radius", "1"])
    assert result.exit_code == EXIT_BAD_INPUT and "--sgd-radius" in result.output and "x>1" in result.output


def test_the_stored_settings_are_the_declared_ones_and_the_sgd_group_only_with_the_sgd():
    x = np.maximum(0, 0.5 + np.random.default_rng(0).standard_normal((4_000, 3)))
    plain = dist_relu.ReLUGaussian(pilot_rows=500, column_block=2).fit(x).settings_
    assert "sgd" not in plain
    assert (plain["pilot_rows"], plain["column_block"], plain["split_every"]) == (500, 2, 8)
    assert plain["count_kernel"] in ("popcount", "gemm")  # "auto", as chosen by the pass
    assert "memory_per_worker" not in plain
    sgd = dist_relu.ReLUGaussian(method="sgd", sgd_radius=4, seed=3).fit(x).settings_
    assert sgd["sgd"] == {"seed": 3, "batches": 1, "radius": 4.0, "lambda": 0.1, "minibatch": 10}
    assert isinstance(sgd["sgd"]["radius"], float)


def test_the_command_line_refuses_a_setting_of_another_model_and_takes_its_own(tmp_path):
    path = tmp_path / "x.zarr"
    dist_relu.simulate_to_zarr(path, *dist_relu.figure1_truth(3), 2_000)
    refused = CliRunner().invoke(main, ["fit", str(path), "--out", str(tmp_path / "f.zarr"), "--rank", "2"])
    assert refused.exit_code == EXIT_BAD_INPUT and "--rank does not apply to --model one-layer" in refused.output
    taken = CliRunner().invoke(main, ["fit", str(path), "--out", str(tmp_path / "g.zarr"), "--pilot-rows", "500",
                                      "--tls-ca-file", str(path / "zarr.json")])  # TLS files go to the scheduler
    assert "does not apply" not in taken.output
