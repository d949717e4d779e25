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

.PHONY: install demo demo-data test test-fast bench clean

install: $(STAMP)

# Reinstalls only when a requirements file or pyproject.toml changes; the package is installed
# editable, so scripts, tests and benchmarks import it from this checkout.
$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-test.txt
	$(PYTHON) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

demo-data: install
	$(PYTHON) create_synthetic_dataset.py --output-dir $(DEMO) --seed 0
	$(PYTHON) create_taxonomic_mappings.py $(SPLITS) --output $(DEMO)/taxonomic_mappings.json --check-images
	$(PYTHON) compute_class_weights.py --train-path $(TRAIN_CSV) --mappings $(DEMO)/taxonomic_mappings.json \
		--method sqrt_inverse --output $(DEMO)/class_weights.pt
	$(PYTHON) create_minimal_subset.py $(SPLITS) --output-dir $(DEMO)/minimal_subsets

# The demo's "stock" model: a small BEiT trained from scratch on the CPU (no hub download).
DEMO_MODEL := --model beit_base_patch16_224 --model-args '{"depth": 4, "embed_dim": 192, "num_heads": 3, "img_size": 96}' \
	--crop-pct 1 --crop-mode squash --interpolation bilinear
# Colour is a trait of the drawn fungi, so no RandAugment (its colour ops would erase it).
DEMO_RUN := $(SPLITS) --mappings $(DEMO)/taxonomic_mappings.json --batch-size 64 --workers 2 \
	--auto-augment none --drop-path 0 --resume none

demo: demo-data
	$(PYTHON) train_minimal.py $(DEMO_RUN) $(DEMO_MODEL) --opt adamw --lr 1e-3 --weight-decay 0.05 \
		--accum-steps 1 --epochs 10 --warmup-epochs 1 --save-dir checkpoints/demo_minimal
	$(PYTHON) train_multitask.py $(DEMO_RUN) --init-from checkpoints/demo_minimal/best_model.pth \
		--lr 3e-4 --layer-decay 0.75 --head-lr-scale 3 --epochs 3 --warmup-epochs 0.5 \
		--save-dir checkpoints/demo_multitask
	$(PYTHON) validate.py --checkpoint checkpoints/demo_multitask/best_model.pth --val-path $(VAL_CSV) \
		--baseline-checkpoint checkpoints/demo_minimal/best_model.pth --workers 2 --output-dir validation_results
	# species held out of training (category_id -1): detect them, name their genus, store a threshold for test.py
	$(PYTHON) validate.py --checkpoint checkpoints/demo_multitask/best_model.pth \
		--val-path $(META)/FungiTastic-OpenSet-Val.csv --open-set --store-threshold --workers 2 \
		--output-dir validation_results/open_set

test: install
	$(PYTHON) -m pytest

# The in-process unit tests only (no subprocess training): under a minute.
test-fast: install
	$(PYTHON) -m pytest -m "not slow"

clean:
	rm -rf $(DEMO) checkpoints validation_results .pytest_cache
