# Commands of the suite. `make install` once, then `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# Used only when torch is not importable yet (this is what installs from local disk here).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
SHAPES ?= datasets/shapes
RUNS ?= output

.PHONY: install test lint format data tables

install:  ## torch (if missing), a working detectron2, the suite (editable) with dev tools
	@$(PYTHON) -c "import torch, torchvision" 2>/dev/null || $(PIP) install $(TORCH_SPEC)
	$(PYTHON) tools/install_detectron2.py
	$(PIP) install -q -e ".[dev]"

test:  ## the whole test suite (CPU)
	$(PYTHON) -m pytest -q

lint:  ## ruff
	$(PYTHON) -m ruff check .

format:
	$(PYTHON) -m ruff check --fix .

data:  ## write the synthetic shapes tree (ImageFolder, VOC, COCO) to $(SHAPES)
	$(PYTHON) -m synthetic --root $(SHAPES)

tables:  ## aggregate finished seeds under $(RUNS) into the papers' tables (CSV / LaTeX / Markdown)
	$(PYTHON) -m tables --runs $(RUNS)
