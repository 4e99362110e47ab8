# make demo [OUT=runs/demo]   train on myntra-small, export, index, evaluate, draw examples
# make quality [QOUT=runs/quality]  the longer-trained bundle (about 48 min on 2 cores) and its quality report
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

# 36 stage-1 epochs: validation Top-30 plateaus from about epoch 30 (runs/quality/report.json)
quality: $(STAMP)
	$(PY) -m export demo --data $(DATA) --out $(QOUT) --stage1-epochs 36 --stage2-epochs 12

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf $(VENV) runs
