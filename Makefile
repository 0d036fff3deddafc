# Everything runs from a virtual environment that the first target you call creates.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev
WORKDIR ?= runs
DATA_DIR ?=
CKPT ?=
ARGS ?=

comma := ,
DATA_DIR_FLAG := $(if $(DATA_DIR),--data-dir $(DATA_DIR))
# One stamp per set of extras, so that asking for other extras installs them.
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: help install train-mnist train-cifar10 quick accuracy-cifar10 accuracy-mnist eval predict report summary test lint format \
	prepare-data clean

help:
	@echo "make train-mnist | train-cifar10   train the seed model (224x224) in $(WORKDIR)/<dataset>/"
	@echo "make quick                         MNIST at 67x67, a few minutes on a CPU"
	@echo "make eval CKPT=runs/mnist          evaluate a run or checkpoint"
	@echo "make accuracy-cifar10 | accuracy-mnist   3 seeds, test accuracy mean/std into experiments/results"
	@echo "make predict CKPT=runs/mnist ARGS='digit.png'   classify image files"
	@echo "make report                        an HTML report per run in $(WORKDIR)"
	@echo "make summary                       the Keras-style layer tables"
	@echo "make test | lint                   tests | ruff"
	@echo "make prepare-data                  download and prepare MNIST and CIFAR-10 (needs TensorFlow)"
	@echo "options: DATA_DIR=dir WORKDIR=dir ARGS='--config.num_epochs=3' EXTRAS=dev,cuda"

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

train-mnist: install
	$(BIN)/python -m alexnet_jax.train --config experiments/mnist.py --workdir $(WORKDIR) $(DATA_DIR_FLAG) $(ARGS)

train-cifar10: install
	$(BIN)/python -m alexnet_jax.train --config experiments/cifar10.py --workdir $(WORKDIR) $(DATA_DIR_FLAG) $(ARGS)

quick: install
	$(BIN)/python -m alexnet_jax.train --config experiments/quick.py --workdir $(WORKDIR)/quick $(DATA_DIR_FLAG) $(ARGS)

SEEDS ?= 0 1 2
accuracy-cifar10: install
	$(BIN)/python -m alexnet_jax.seeds --config experiments/cifar10.py --seeds $(SEEDS) --workdir $(WORKDIR)/seeds --results experiments/results/cifar10-seeds $(DATA_DIR_FLAG) $(ARGS)

accuracy-mnist: install
	$(BIN)/python -m alexnet_jax.seeds --config experiments/mnist.py --seeds $(SEEDS) --workdir $(WORKDIR)/seeds --results experiments/results/mnist-seeds $(DATA_DIR_FLAG) $(ARGS)

eval: install
	@test -n "$(CKPT)" || { echo "usage: make eval CKPT=runs/mnist [ARGS='--json out.json']"; exit 2; }
	$(BIN)/python -m alexnet_jax.eval --ckpt $(CKPT) $(DATA_DIR_FLAG) $(ARGS)

predict: install
	@test -n "$(CKPT)" || { echo "usage: make predict CKPT=runs/mnist ARGS='digit.png photos/'"; exit 2; }
	$(BIN)/python -m alexnet_jax.predict --ckpt $(CKPT) $(ARGS)

report: install
	$(BIN)/python -m alexnet_jax.report --workdir $(WORKDIR) $(DATA_DIR_FLAG) $(ARGS)

summary: install
	$(BIN)/python -m alexnet_jax.summary --dataset cifar10
	$(BIN)/python -m alexnet_jax.summary --dataset mnist

test: install
	$(BIN)/python -m pytest $(ARGS)

lint: install
	$(BIN)/ruff check alexnet_jax experiments tests
	$(BIN)/ruff format --check alexnet_jax experiments tests

format: install
	$(BIN)/ruff format alexnet_jax experiments tests
	$(BIN)/ruff check --fix alexnet_jax experiments tests

prepare-data:
	$(MAKE) install EXTRAS=dev,prepare
	$(BIN)/python -m alexnet_jax.data mnist cifar10 $(DATA_DIR_FLAG)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
