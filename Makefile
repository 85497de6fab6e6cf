# Two entry points for a fresh clone: `make demo` and `make test`. Both create .venv first.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# torch is pinned to the CPU wheel through constraints.txt (never via PIP_CONSTRAINT, which leaks into
# build isolation); extras give the trainer, the demo and the test tools.
INSTALL := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: setup browser test demo clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(INSTALL) -e '.[train,demo,eval,test]'
	touch $@

# The web-demo test drives Debian's chromium through playwright (never `playwright install`). Installing it needs
# root; without it the test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null) || \
	  echo "chromium could not be installed: the web-demo browser test will be skipped"

test: setup browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/padt demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
