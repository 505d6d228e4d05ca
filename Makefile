# Commands of the suite. `make install` once, then `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# Used only when torch is not importable yet (this is what installs from local disk here).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
SHAPES ?= datasets/shapes
RUNS ?= output
# make test's parallel pytest-xdist workers (one thread each); TEST_WORKERS=1 is serial
TEST_WORKERS ?= 2
# make pretrain: synthetic shapes on CPU by default; DATA=/path/to/imagenet for the paper's run
METHOD ?= care
ARCH ?= resnet50
DATA ?=
EPOCHS ?=
BATCH ?=
GPUS ?= 1
OUT ?= $(METHOD)_$(subst resnet,r,$(ARCH)).pth

.PHONY: install ensure test test-extended lint format data tables pretrain demo

# Every command below first makes sure the suite is installed (a fresh machine needs nothing
# else): `make demo` and `make test` work on their own.
ensure:
	@$(PYTHON) -c "import importlib.metadata as m, detectron2, pytest, xdist; m.version('care-transfer-suite')" \
		2>/dev/null || $(MAKE) install

demo: ensure  ## the whole pipeline on synthetic data (CPU): pretrain, transfer, tables, attention maps
	$(PYTHON) tools/demo.py --out output/demo

install:  ## torch (if missing), a working detectron2, the suite (editable) with dev tools
	@$(PYTHON) -c "import torch, torchvision" 2>/dev/null || $(PIP) install $(TORCH_SPEC)
	$(PYTHON) tools/install_detectron2.py
	$(PIP) install -q -e ".[dev]"

test: ensure  ## the whole test suite (CPU), on $(TEST_WORKERS) parallel workers of one thread each
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --durations=15

test-extended: ensure  ## the learning-signal runs, the tiny demo, the multi-process and multi-machine runs and other long runs left out of `make test` (~55 min on 2 cores)
	$(PYTHON) -m pytest -q --extended -m extended

lint: ensure  ## ruff: lint rules, complexity (C901 <= 12) and formatting of the changed style
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:  ## ruff format, then the fixable lint rules
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .

data: ensure  ## write the synthetic shapes tree (ImageFolder, VOC, COCO) to $(SHAPES)
	$(PYTHON) -m synthetic --root $(SHAPES)

tables: ensure  ## aggregate finished seeds under $(RUNS) into the papers' tables (CSV / LaTeX / Markdown) and report.html
	$(PYTHON) -m tables --runs $(RUNS) --html

pretrain: ensure  ## CARE ResNet-50 on synthetic shapes (CPU, < 5 min) -> care_r50.pth; DATA=... for ImageNet
ifeq ($(DATA),)
	$(PYTHON) -m pretrain --recipe shapes-cpu --method $(METHOD) --arch $(ARCH) \
		$(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(BATCH),--batch-size $(BATCH)) \
		--output runs/pretrain/$(METHOD)_$(ARCH)_shapes --out $(OUT)
else
	$(PYTHON) -m torch.distributed.run --nproc_per_node=$(GPUS) -m pretrain --recipe imagenet \
		--method $(METHOD) --arch $(ARCH) --data $(DATA) \
		$(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(BATCH),--batch-size $(BATCH)) \
		--output runs/pretrain/$(METHOD)_$(ARCH) --out $(OUT)
endif
