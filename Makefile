# make demo [OUT=runs/demo]   train on myntra-small, export, index, evaluate, draw examples
# make quality [QOUT=runs/quality]  the longer-trained bundle (under 60 min of training on 2 cores) and its quality report
# make test                   the test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
OUT ?= runs/demo
QOUT ?= runs/quality
DATA ?= ../shared/data/myntra-small
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo quality test venv clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the CPU build of torch first (a local wheel here), so the range in [train] is already met
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[train,dev]"
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m export demo --data $(DATA) --out $(OUT)

# width 32 (1.24 M parameters, ~98 s per epoch on 2 cores): +1.2 points of validation Top-30 over
# width 24 at equal epochs; 32 stage-1 epochs fit the 60-minute budget, which the time limit enforces;
# AdamW weight decay 0.05 + label smoothing 0.1: validation Top-30 0.894 vs 0.872 without (0.893 at decay 0.1);
# a random shift per image rather than per batch: 0.899
quality: $(STAMP)
	$(PY) -m export demo --data $(DATA) --out $(QOUT) --width 32 --stage1-epochs 32 --stage2-epochs 12 \
		--stage1-time-budget-s 3300 --weight-decay 0.05 --label-smoothing 0.1 --shift-per-sample

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf $(VENV) runs
