# Each target creates .venv with the machine's python3 if it is missing and installs the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dist-relu demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The edit-test loop, under a minute: every test not marked slow (no command-line processes,
# clusters, services or statistical sweeps).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/memory_fit.py
	$(BIN)/python benchmarks/figure1.py
	$(BIN)/python benchmarks/convert_csv.py
	$(BIN)/python benchmarks/cluster_overhead.py
	$(BIN)/python benchmarks/fit_vs_read.py
	$(BIN)/python benchmarks/scaling_n.py
	$(BIN)/python benchmarks/count_kernels.py
	$(BIN)/python benchmarks/large_d.py
	$(BIN)/python benchmarks/two_layer.py
	$(BIN)/python benchmarks/random_bias.py
	$(BIN)/python benchmarks/se_coverage.py
	$(BIN)/python benchmarks/model_check.py
	$(BIN)/python benchmarks/se_cost.py
	$(BIN)/python benchmarks/jackknife.py
	$(BIN)/python benchmarks/codec_study.py
	$(BIN)/python benchmarks/huge_pages.py
	$(BIN)/python benchmarks/cuts_accuracy.py
	$(BIN)/python benchmarks/cuts_cost.py
	$(BIN)/python benchmarks/cut_information.py

clean:
	rm -rf $(VENV) build *.egg-info
