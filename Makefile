# make demo [OUT=runs/demo]   train on myntra-small, export, index, evaluate, draw examples, outfit head
# make quality [QOUT=runs/quality]  the longer-trained bundle (under 60 min of training on 2 cores) and its report
# make demo-datrnet [DOUT=runs/datrnet]  the demo with DAtRNet (same training budget; served as chunk_replace)
# make demo-fsn [FOUT=runs/fsn]  the demo with FashionSearchNet (same training budget; served as fsn)
# make quality-datrnet [DQOUT=runs/quality-datrnet]  DAtRNet's quality bundle (under 60 min of training on 2 cores)
# make quality-fsn [FQOUT=runs/quality-fsn] [FSN_FLAGS=--no-localize]  FashionSearchNet's quality bundle (under 60 min)
# make test                   the test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
OUT ?= runs/demo
QOUT ?= runs/quality
DOUT ?= runs/datrnet
DQOUT ?= runs/quality-datrnet
FOUT ?= runs/fsn
FQOUT ?= runs/quality-fsn
FSN_FLAGS ?=
DATA ?= ../shared/data/myntra-small
CKSUM := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# the demos need training, the server, signatures and plots; the tests need everything (dev adds Ray,
# Milvus Lite, pyarrow, selenium, ...), so a fresh `make demo` installs less and starts sooner
DEMO_EXTRAS := train,serve,trust,plots
ALL_EXTRAS := $(DEMO_EXTRAS),dev
STAMP := $(VENV)/.installed-$(CKSUM)
DEMO_STAMP := $(VENV)/.demo-$(CKSUM)

.PHONY: demo demo-datrnet demo-fsn quality quality-datrnet quality-fsn test venv demo-venv clean

define install_extras
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the CPU build of torch first (a local wheel here), so the range in [train] is already met; hnswlib
	# compiles from source on one core for about a minute, so it builds while torch installs
	$(PY) -m pip install --quiet "hnswlib>=0.8" & hnsw=$$!; $(PY) -m pip install --quiet "torch==2.13.0" && wait $$hnsw
	$(PY) -m pip install --quiet -e ".[$(1)]"
endef

$(STAMP): pyproject.toml
	$(call install_extras,$(ALL_EXTRAS))
	@rm -f $(VENV)/.installed-* $(VENV)/.demo-*; touch $(DEMO_STAMP) $@

$(DEMO_STAMP): pyproject.toml
	$(call install_extras,$(DEMO_EXTRAS))
	@rm -f $(VENV)/.demo-*; touch $@

venv: $(STAMP)

# the demos' environment: the full one when it is already installed, else only the demo extras
demo-venv:
	@test -f $(STAMP) || $(MAKE) --no-print-directory $(DEMO_STAMP)

demo: demo-venv
	$(PY) -m export demo --data $(DATA) --out $(OUT)

demo-datrnet: demo-venv
	$(PY) -m export demo --family datrnet --data $(DATA) --out $(DOUT)

demo-fsn: demo-venv
	$(PY) -m export demo --family fsn --data $(DATA) --out $(FOUT)

# the pretrained backbone fine-tuned from block 11 at 160x128 (three cached variants per image),
# 50 minutes of stage 1 and 4 of stage 2: under 60 minutes of training on 2 cores; after a stage 1
# this long, stage 2 trains the memory block alone (training the learners too only lost, docs/quality.md)
quality: demo-venv
	$(PY) -m export demo --data $(DATA) --out $(QOUT) --lite-split 11 --input-size 160 128 --trunk-variants 3 \
		--stage1-time-budget-s 3000 --stage2-time-budget-s 240 --weight-decay 0.05 --label-smoothing 0.1 \
		--stage2-memory-only --stage2-patience 30

# DAtRNet's ASE networks on the deeper frozen trunk (blocks 0-4, stride 8), three cached variants per image,
# 50 minutes of stage 1 (DAtRNet has no stage 2)
quality-datrnet: demo-venv
	$(PY) -m export demo --family datrnet --data $(DATA) --out $(DQOUT) --lite-split 5 --trunk-variants 3 \
		--stage1-time-budget-s 3000

# FashionSearchNet on the frozen trunk (stride 16), three cached variants per image: stage 1 runs its
# 4,000 planned steps (about 25 minutes here) within a 50-minute cap; FSN_FLAGS=--no-localize is the ablation
quality-fsn: demo-venv
	$(PY) -m export demo --family fsn --data $(DATA) --out $(FQOUT) --trunk-variants 3 --stage1-steps 4000 \
		--stage1-time-budget-s 3000 $(FSN_FLAGS)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf $(VENV) runs
