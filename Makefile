# Two commands for a new user: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
CHECKOV_VENV := .venv-checkov
PY := $(VENV)/bin/python
CONFIG ?= configs/demo.yaml
export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE := disabled
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONPATH := $(CURDIR)

.PHONY: demo test install clean

$(VENV)/.installed: requirements.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch + torchvision first, pinned: this pair lies on the machine's disk (a CUDA build that runs on CPU too;
	# torchvision from PyPI does not import beside the 2.13.0 CPU wheel). Unpinned, pip would fetch several GB.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	touch $@

# checkov in its own venv: its pins (boto3 1.35, packaging<24, networkx<2.7, ...) clash with .venv's.
$(CHECKOV_VENV)/.installed: infra/checkov-constraints.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q checkov==3.3.30 -c infra/checkov-constraints.txt
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	@echo "== 1/4 build the dataset (pipelines.build)"
	$(PY) -m pipelines.build --config $(CONFIG) $(ARGS)
	@echo "== 2/4 train (training.train)"
	$(PY) -m training.train --config $(CONFIG) $(ARGS)
	@echo "== 3/4 evaluate (evaluation.run)"
	$(PY) -m evaluation.run --config $(CONFIG) $(ARGS)
	@echo "== 4/4 dashboard (evaluation.dashboard)"
	$(PY) -m evaluation.dashboard --config $(CONFIG) $(ARGS)
	@echo "== done. Outputs (storage root data/): data/synthweb/v1/manifest.json (+ funnel.json, shards/),"
	@echo "   data/checkpoints/demo/latest.json, data/eval/results/, data/dashboard/index.html"

test: $(VENV)/.installed $(CHECKOV_VENV)/.installed
	$(PY) -m pytest -q $(ARGS)

clean:
	rm -rf data
