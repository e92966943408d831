# darknetpy: `make demo` sets up and classifies dog.jpg with Tiny Darknet; `make test` runs the tests.
# Set DARKNETPY_MIRROR=<directory or URL base> to fetch the weights and images from a mirror (offline).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CLI    := $(VENV)/bin/darknetpy

.PHONY: demo install weights test bench bench-int8 clean

demo: install weights                    ## set up, fetch, classify weights/dog.jpg
	$(CLI) classify cfg/tiny.cfg weights/tiny.weights weights/dog.jpg

install: $(VENV)/.installed              ## create .venv and install darknetpy (editable) with test extras

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

weights: install                         ## download tiny.weights, dog.jpg, labels into weights/ (sha256-checked)
	$(CLI) fetch --dest weights

test: install                            ## run the whole test suite
	$(PY) -m pytest -q

bench: install                           ## darknetpy vs onnxruntime, a process each, alternating rounds, 1 and 2 threads (ARGS=--busy, --json)
	$(PY) benchmarks/bench.py $(ARGS)

bench-int8: install                      ## int8 engine vs onnxruntime on the same QDQ model, interleaved
	$(PY) benchmarks/bench_int8.py $(ARGS)

.PHONY: plots
plots: install                           ## one picture of each --plot kind into examples/plots/ (installs the [plot] extra)
	$(PY) -m pip install --quiet -e '.[test,plot]'
	$(CLI) fetch --all --dest weights
	$(PY) examples/plots.py

.PHONY: fuzz
fuzz: install                            ## a longer property-based fuzzing campaign (FUZZ_EXAMPLES=20000 per test, FUZZ_SEED=n to replay; int8 agreement on AGREEMENT_SEEDS=40 weight sets per network)
	DARKNETPY_FUZZ_EXAMPLES=$(or $(FUZZ_EXAMPLES),20000) DARKNETPY_FUZZ_SEED=$(FUZZ_SEED) \
		DARKNETPY_AGREEMENT_SEEDS=$(or $(AGREEMENT_SEEDS),40) \
		$(PY) -m pytest -q -p no:cacheprovider tests/core/test_fuzz.py tests/int8/test_int8_agreement.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
