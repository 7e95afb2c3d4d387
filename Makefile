# `make demo` trains and analyses a model; `make test` runs the suite. Both build .venv first.
PYTHON ?= python3
VENV := .venv
VENV_TL2 := .venv-tl2
PIP_FLAGS := --quiet --disable-pip-version-check

.PHONY: install demo test test-tl2 wheel-check lint format bench docs clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) -c constraints.txt -e '.[dev]'
	touch $@

# A second environment with TransformerLens 2.x (HookedTransformer only, numpy < 2).
$(VENV_TL2)/.installed: pyproject.toml constraints-tl2.txt
	$(PYTHON) -m venv $(VENV_TL2)
	$(VENV_TL2)/bin/pip install $(PIP_FLAGS) -c constraints-tl2.txt -e '.[dev,docs]'
	touch $@

# The docs extra on top of the dev environment, once (reinstalled when pyproject.toml changes).
$(VENV)/.docs-installed: $(VENV)/.installed pyproject.toml constraints.txt
	$(VENV)/bin/pip install $(PIP_FLAGS) -c constraints.txt -e '.[dev,docs]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/belief-lens demo

# One pytest-xdist worker per core, one thread each (tests/conftest.py); a module's expensive
# fixtures stay on one worker (xdist_group marks).
PYTEST_ARGS ?= -n auto --dist loadgroup

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-tl2: $(VENV_TL2)/.installed
	$(VENV_TL2)/bin/python -m pytest $(PYTEST_ARGS)

# Build the sdist and wheel, install the wheel into a fresh venv, use it from outside the repo.
wheel-check: $(VENV)/.installed
	PYTHON=$(PYTHON) BUILD_PYTHON=$(VENV)/bin/python .ci/wheel-check

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check belief_lens tests bench demos
	$(VENV)/bin/ruff format --check belief_lens tests bench demos

format: $(VENV)/.installed
	$(VENV)/bin/ruff format belief_lens tests bench demos
	$(VENV)/bin/ruff check --fix belief_lens tests bench demos

# The API reference from the docstrings, offline, into site/; warnings (a broken cross-reference,
# a docstring that does not match its signature) are errors.
docs: $(VENV)/.docs-installed
	$(VENV)/bin/mkdocs build --strict

bench: $(VENV)/.installed
	for f in bench/*.py; do $(VENV)/bin/python $$f || exit 1; done

clean:
	rm -rf $(VENV) $(VENV_TL2) .pytest_cache .ruff_cache site
