# Two commands on a fresh clone: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := data/demo
META := $(DEMO)/metadata/FungiTastic
TRAIN_CSV := $(META)/FungiTastic-Train.csv
VAL_CSV := $(META)/FungiTastic-ClosedSet-Val.csv
TEST_CSV := $(META)/FungiTastic-ClosedSet-Test.csv
SPLITS := --train-path $(TRAIN_CSV) --val-path $(VAL_CSV) --test-path $(TEST_CSV)

.PHONY: install demo demo-data test bench clean

install: $(STAMP)

# Reinstalls only when a requirements file changes.
$(STAMP): requirements.txt requirements-test.txt
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-test.txt
	touch $(STAMP)

demo-data: install
	$(PYTHON) create_synthetic_dataset.py --output-dir $(DEMO) --seed 0
	$(PYTHON) create_taxonomic_mappings.py $(SPLITS) --output $(DEMO)/taxonomic_mappings.json --check-images
	$(PYTHON) compute_class_weights.py --train-path $(TRAIN_CSV) --mappings $(DEMO)/taxonomic_mappings.json \
		--method sqrt_inverse --output $(DEMO)/class_weights.pt
	$(PYTHON) create_minimal_subset.py $(SPLITS) --output-dir $(DEMO)/minimal_subsets

demo: demo-data

test: install
	$(PYTHON) -m pytest

clean:
	rm -rf $(DEMO) checkpoints validation_results .pytest_cache
