# Everything runs from a virtual environment that the first target you call creates.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev
WORKDIR ?= runs
DATA_DIR ?=
CKPT ?=
ARGS ?=
COPY_DATA_FROM ?=

comma := ,
DATA_DIR_FLAG := $(if $(DATA_DIR),--data-dir "$(DATA_DIR)")
# Before training, a dataset the data dir lacks is downloaded and prepared (TFDS), installing
# TensorFlow (the `prepare` extra) into the venv first if need be; quiet when it is prepared.
# COPY_DATA_FROM=dir copies it from a prepared data dir instead (an offline machine).
PREPARE = $(BIN)/python -m alexnet_jax.prepare --install $(DATA_DIR_FLAG) \
	$(if $(COPY_DATA_FROM),--from "$(COPY_DATA_FROM)")
# One stamp per set of extras, so that asking for other extras installs them.
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: help install train-mnist train-cifar10 quick accuracy-cifar10 accuracy-mnist sweep-cifar10 sweep-mnist eval predict report summary test lint format \
	prepare-data bench bench-peers bench-tta gpu-suite tensorboard clean

help:
	@echo "make train-mnist | train-cifar10   train the seed model (224x224) in $(WORKDIR)/<dataset>/"
	@echo "make quick                         MNIST at 67x67, a few minutes on a CPU"
	@echo "make eval CKPT=runs/mnist          evaluate a run or checkpoint"
	@echo "make accuracy-cifar10 | accuracy-mnist   3 seeds, test accuracy mean/std into experiments/results"
	@echo "make sweep-cifar10 | sweep-mnist   recipe variants on the validation split, a table into experiments/results"
	@echo "make predict CKPT=runs/mnist ARGS='digit.png'   classify image files"
	@echo "make report                        an HTML report per run in $(WORKDIR)"
	@echo "make tensorboard                   TensorBoard on the runs in $(WORKDIR) (ARGS='--port 6007')"
	@echo "make summary                       the Keras-style layer tables"
	@echo "make test | lint | format          tests (ARGS='tests/test_config.py -k seed') | ruff | ruff's fixes"
	@echo "make install | clean               the .venv (make's other targets create it) | remove it"
	@echo "make bench                         train/eval images/s per configuration (ARGS='--out f.json')"
	@echo "make bench-peers                   our step against Keras 3 model.fit, same process and device"
	@echo "make bench-tta                     seconds to 90% on CIFAR-10 and 99.5% on MNIST"
	@echo "make gpu-suite OUT=dir BUDGET=510  the whole GPU measurement within a budget (STAGES=env,bench,...)"
	@echo "make prepare-data                  download and prepare MNIST and CIFAR-10 (the train targets do it too)"
	@echo "options: DATA_DIR=dir WORKDIR=dir ARGS='--config.num_epochs=3' EXTRAS=dev,cuda (or dev,cuda12) COPY_DATA_FROM=dir"

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

train-mnist: install
	$(PREPARE) mnist
	$(BIN)/python -m alexnet_jax.train --config experiments/mnist.py --workdir "$(WORKDIR)" $(DATA_DIR_FLAG) $(ARGS)

train-cifar10: install
	$(PREPARE) cifar10
	$(BIN)/python -m alexnet_jax.train --config experiments/cifar10.py --workdir "$(WORKDIR)" $(DATA_DIR_FLAG) $(ARGS)

quick: install
	$(PREPARE) mnist
	$(BIN)/python -m alexnet_jax.train --config experiments/quick.py --workdir "$(WORKDIR)/quick" $(DATA_DIR_FLAG) $(ARGS)

SEEDS ?= 0 1 2
accuracy-cifar10: install
	$(PREPARE) cifar10
	$(BIN)/python -m alexnet_jax.seeds --config experiments/cifar10.py --seeds $(SEEDS) --workdir "$(WORKDIR)/seeds" --results experiments/results/cifar10-seeds $(DATA_DIR_FLAG) $(ARGS)

accuracy-mnist: install
	$(PREPARE) mnist
	$(BIN)/python -m alexnet_jax.seeds --config experiments/mnist.py --seeds $(SEEDS) --workdir "$(WORKDIR)/seeds" --results experiments/results/mnist-seeds $(DATA_DIR_FLAG) $(ARGS)

# Recipe variants on the validation split, one device, one process (ARGS='--only base mixup').
sweep-cifar10: install
	$(BIN)/python -m alexnet_jax.sweep --config experiments/sweep_cifar10.py --out experiments/results/sweep-cifar10 $(DATA_DIR_FLAG) $(ARGS)

sweep-mnist: install
	$(BIN)/python -m alexnet_jax.sweep --config experiments/sweep_mnist.py --out experiments/results/sweep-mnist $(DATA_DIR_FLAG) $(ARGS)

eval: install
	@test -n "$(CKPT)" || { echo "usage: make eval CKPT=runs/mnist [ARGS='--json out.json']"; exit 2; }
	$(BIN)/python -m alexnet_jax.eval --ckpt "$(CKPT)" $(DATA_DIR_FLAG) $(ARGS)

predict: install
	@test -n "$(CKPT)" || { echo "usage: make predict CKPT=runs/mnist ARGS='digit.png photos/'"; exit 2; }
	$(BIN)/python -m alexnet_jax.predict --ckpt "$(CKPT)" $(ARGS)

report: install
	$(BIN)/python -m alexnet_jax.report --workdir "$(WORKDIR)" $(DATA_DIR_FLAG) $(ARGS)

# The tensorboard extra (in dev) brings the viewer; each run dir holds its event files.
tensorboard: install
	$(BIN)/tensorboard --logdir "$(WORKDIR)" $(ARGS)

summary: install
	$(BIN)/python -m alexnet_jax.summary --dataset cifar10 $(ARGS)
	$(BIN)/python -m alexnet_jax.summary --dataset mnist $(ARGS)

test: install
	$(BIN)/python -m pytest $(ARGS)

lint: install
	$(BIN)/ruff check alexnet_jax experiments tests benchmarks
	$(BIN)/ruff format --check alexnet_jax experiments tests benchmarks

format: install
	$(BIN)/ruff format alexnet_jax experiments tests benchmarks
	$(BIN)/ruff check --fix alexnet_jax experiments tests benchmarks

# Benchmarks: small sizes on a CPU (seconds), the experiments' sizes on an accelerator.
bench: install
	$(BIN)/python -m alexnet_jax.bench $(ARGS)

bench-peers: install
	$(BIN)/python benchmarks/keras_peer.py $(ARGS)

# Both datasets run even when the first misses its target; the status says whether both reached.
bench-tta: install
	status=0; for d in cifar10 mnist; do \
	  $(BIN)/python -m alexnet_jax.tta --config experiments/$$d.py --out "$(WORKDIR)/bench/tta-$$d.json" \
	    $(DATA_DIR_FLAG) $(ARGS) || status=1; \
	done; exit $$status

# The whole GPU measurement of benchmarks/README.md's runbook within BUDGET seconds (default
# 510), each stage's log and JSON and summary.md in OUT; tiny sizes on a CPU. STAGES=env,smoke,...
OUT ?= runs/gpu-suite
BUDGET ?=
STAGES ?=
gpu-suite: install
	$(BIN)/python benchmarks/gpu_suite.py --out "$(OUT)" $(if $(BUDGET),--budget $(BUDGET)) \
	  $(if $(STAGES),--stages $(STAGES)) $(DATA_DIR_FLAG) $(ARGS)

prepare-data: install
	$(PREPARE) mnist cifar10

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
