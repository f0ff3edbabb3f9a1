# Two entry points: `make demo` (runs the loop on the digits template) and `make test`.
# Both create ./.venv on first use and install what they need (PyTorch through
# constraints.txt: torch==2.13.0, the CPU wheel on this kind of machine).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo

.PHONY: demo test bench typecheck clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[templates,dev]'
	touch $@

demo: $(VENV)/.installed
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/ralph-ml init $(DEMO_DIR) --template digits
	cd $(DEMO_DIR) && ../$(VENV)/bin/ralph-ml start; rc=$$?; \
	  echo "ralph-ml start exited with $$rc (0 target met, 2 safeguard, 3 plateau)"; \
	  ../$(VENV)/bin/ralph-ml status; \
	  echo "report: $(DEMO_DIR)/reports/final_report.md"; \
	  case $$rc in 0|2|3) exit 0;; *) exit $$rc;; esac

# The dashboard test drives Debian's Chromium headless through playwright (the `dev` extra);
# it is installed here when missing, never downloaded by playwright.
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	elif sudo -n true 2>/dev/null; then sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else echo "the dashboard test needs $(CHROMIUM): run 'sudo apt-get install -y chromium' (Debian/Ubuntu)" >&2; exit 1; fi

# The real-Slurm tests start a private single-node cluster (tests/executors/real_slurm.py) from
# Debian's Slurm 22.05 packages, installed here when missing. They need root (slurmd launches
# the jobs); without it they are skipped with that reason.
SLURMCTLD ?= /usr/sbin/slurmctld
SLURM_PACKAGES := slurmctld slurmd slurm-client munge
$(SLURMCTLD):
	@if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SLURM_PACKAGES); \
	elif sudo -n true 2>/dev/null; then sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SLURM_PACKAGES); \
	else echo "the real-Slurm tests need $(SLURMCTLD): run 'sudo apt-get install -y $(SLURM_PACKAGES)' (Debian/Ubuntu)" >&2; exit 1; fi

test: $(VENV)/.installed $(CHROMIUM) $(SLURMCTLD)
	$(PY) -m pytest -q

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy --python-executable $(PY) src/ralph_ml

bench: $(VENV)/.installed
	$(PY) bench/loop_overhead.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
