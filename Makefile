# Two entry points for a fresh clone: `make demo` and `make test`. Both create .venv first.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# torch is pinned to the CPU wheel through constraints.txt (never via PIP_CONSTRAINT, which leaks into
# build isolation); extras give the trainer, the demo and the test tools.
INSTALL := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: setup test demo clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(INSTALL) -e '.[train,demo,eval,test]'
	touch $@

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/padt demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
