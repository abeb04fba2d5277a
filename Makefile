# napari-linblur: `make demo` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
XVFB   := $(shell command -v xvfb-run >/dev/null 2>&1 && echo "xvfb-run -a -s '-screen 0 1280x1024x24'")

.PHONY: setup demo test lint bench docs-figures clean FORCE

FORCE:

# a venv whose interpreter went away (a Python upgrade) or that has no pip (a failed `venv`) is made again
HEALTHY := $(shell $(BIN)/python -c "import pip, napari_linblur" >/dev/null 2>&1 && echo yes)

setup: $(STAMP)

$(STAMP): pyproject.toml $(if $(HEALTHY),,FORCE)
	PYTHON=$(PYTHON) bash tools/install_system_deps.sh
	$(BIN)/python -c "import pip" >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: setup
	$(BIN)/linblur demo --out demo_out

lint: setup
	$(BIN)/ruff check src tests benchmarks docs
	$(BIN)/npe2 validate --imports napari-linblur

test: setup lint
	$(eval XVFB := $(shell command -v xvfb-run >/dev/null 2>&1 && echo "xvfb-run -a -s '-screen 0 1280x1024x24'"))
	$(XVFB) $(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/run.py --out bench_out

docs-figures: setup
	$(eval XVFB := $(shell command -v xvfb-run >/dev/null 2>&1 && echo "xvfb-run -a -s '-screen 0 1280x1024x24'"))
	$(if $(XVFB),xvfb-run -a -s '-screen 0 1600x1000x24') $(BIN)/python docs/figures/make_all.py  # the screenshots' window is 1500 x 950

clean:
	rm -rf $(VENV) demo_out bench_out .pytest_cache .ruff_cache
