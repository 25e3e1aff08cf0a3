"""The modules' arrows point down: each imports only from the layers below it (docs/design.md, module map)."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "dist_relu"

# Lowest first. A module may import only from strictly lower layers.
LAYERS = [
    {"errors", "kernels", "model", "separable", "sgd"},  # the math, on plain arrays
    {"entry", "compiled", "budget", "latent"},
    {"storage", "scheduler", "settings", "polychoric"},
    {"io", "checkpoint", "uncertainty"},  # Zarr in and out; saved partial sums; standard errors (of tables too)
    {"graph"},  # dask graphs of the kernels
    {"pipeline", "fitstore"},  # the seam every model uses; the fit format
    {"plan", "simulate", "convert"},
    {"estimator"},  # the one-layer model's front doors
    {"twolayer", "randombias"},  # models made of the pipeline (and the one-layer fit)
    {"report"},  # a stored fit shown to a person
    {"cli"},
]
LAYER = {module: level for level, modules in enumerate(LAYERS) for module in modules}
MATH = LAYERS[0] | {"compiled", "latent", "uncertainty", "polychoric"}


def imports(module):
    """Return the dist_relu modules and the outside packages that ``module`` imports at its top level."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    own, outside = set(), set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            own |= {node.module} if node.module else {alias.name for alias in node.names} - {"__version__"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            outside.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            outside |= {alias.name.split(".")[0] for alias in node.names}
    return own, outside


def test_every_module_has_a_layer():
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert modules == set(LAYER)


@pytest.mark.parametrize("module", sorted(LAYER))
def test_a_module_imports_only_from_lower_layers(module):
    own, outside = imports(module)
    higher = sorted(other for other in own if LAYER[other] >= LAYER[module])
    assert not higher, f"{module} (layer {LAYER[module]}) imports {higher}"
    if module in MATH:
        assert not outside & {"dask", "distributed", "zarr", "fsspec"}, f"{module} is math on plain arrays"


def test_zarr_is_written_in_one_place():
    """Groups and arrays are created by io only (fits, samples stores, converted files)."""
    writes = re.compile(r"create_array\(|open_group\([^)]*mode=\"w")
    writers = {path.stem for path in PACKAGE.glob("*.py") if writes.search(path.read_text())}
    assert writers == {"io"}
