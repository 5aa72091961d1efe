# The two set-up commands of the README: `make run` and `make test`. Both install what they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: run test demo benchmarks lock clean

# The lock files (requirements*.txt, pinned with hashes) are what gets installed; `make lock`
# makes them again from the ranges in requirements*.in.
PIP_INSTALL := $(PY) -m pip install -q --disable-pip-version-check --require-hashes --no-deps

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -r requirements.txt
	touch $@

$(VENV)/.installed-test: requirements-test.txt $(VENV)/.installed
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(PIP_INSTALL) -r requirements-test.txt
	touch $@

## run: migrate the embedded SQLite database and serve the admin with a Celery worker and beat
run: $(VENV)/.installed
	PYTHON=$(PY) scripts/run.sh

## demo: load a demo data set that runs with `make run` (a project, a registry connection, a configuration,
## the local agent), then say how to run a demo build and what this machine lacks for it
demo: $(VENV)/.installed
	PYTHON=$(PY) scripts/demo.sh

## test: install what the tests need (Python and Debian packages), start the real services, run the suite
test: $(VENV)/.installed-test
	scripts/install-test-deps.sh
	PYTHON=$(PY) scripts/run-tests.sh

## benchmarks: the speed targets of the issues, with their figures and ratios (needs root for Debian's skopeo)
benchmarks: $(VENV)/.installed-test
	scripts/install-test-deps.sh
	command -v skopeo >/dev/null || (apt-get update -q && apt-get install -y -q --no-install-recommends skopeo)
	for benchmark in benchmarks/[!_]*.py; do echo "== $$benchmark"; $(PY) $$benchmark || exit 1; done

## lock: pin every dependency (with hashes) again from requirements*.in: the server, the tests, an agent
lock: $(VENV)/.installed
	$(PY) -m pip install -q --disable-pip-version-check 'pip-tools>=7.4'
	for name in requirements requirements-test requirements-agent; do \
	  $(VENV)/bin/pip-compile -q --upgrade --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
	    --no-emit-find-links -o $$name.txt $$name.in || exit 1; \
	done

clean:
	rm -rf $(VENV) test-output
