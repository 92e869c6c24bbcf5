# fairseq-sage: `make setup`, `make test`, `make demo`. See README.md.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
SETUP_INPUTS := constraints.txt requirements.txt pyproject.toml scripts/setup_env.sh scripts/patch_fairseq.py scripts/verify_install.py

.PHONY: setup test lint format verify clean prepare-demo

setup: $(STAMP)

$(STAMP): $(SETUP_INPUTS)
	VENV=$(VENV) bash scripts/setup_env.sh
	touch $@

verify: $(STAMP)
	$(PY) scripts/verify_install.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(VENV)/bin/python -m pytest -q tests

# The embedded Tatoeba demo corpus -> $(DEMO_DATA) (README, "Data preparation"); e.g. DEMO_PREP_ARGS='--train-size 20000'.
DEMO_DATA ?= data-bin/demo
DEMO_PREP_ARGS ?=
prepare-demo: $(STAMP)
	$(PY) -m data_prep.demo --dest $(DEMO_DATA) $(DEMO_PREP_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
