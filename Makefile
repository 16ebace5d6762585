# The two commands of the README: `make demo` and `make test`. Everything else is what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODELS := triton_models/fusion/1/model.pt
# The runtime package's one copy in the model repository (build/repository.py says where and why).
CODE := triton_models/fv2es/1/fv2es/__init__.py
RUNTIME := $(shell find python_backend/fv2es -name '*.py')
PRELOAD := $(VENV)/lib/fv2es/fv2es_preload.so

.PHONY: demo test test-quick serve web build configs train train-base train-group evaluate bench clean

demo: $(MODELS) $(CODE)
	$(BIN)/fv2es-demo

# The whole suite (CI); the 15 slowest tests are listed at the end.
test: $(MODELS) $(CODE)
	$(BIN)/pytest -q --durations=15 tests

# The edit loop: everything but the tests marked slow (own servers, training, long runs).
test-quick: $(MODELS) $(CODE)
	$(BIN)/pytest -q -m "not slow" tests

serve: $(MODELS) $(CODE)
	$(BIN)/fv2es-serve

# The web page on http://127.0.0.1:8080/ with an embedded tritonserver behind it, until Ctrl-C.
web: $(MODELS) $(CODE)
	$(BIN)/fv2es-web --embedded

build: $(MODELS) $(CODE)

# Installs once; re-runs only when the pins change. espeak-ng (Debian) speaks the generated test media;
# libjemalloc2 (Debian) is the server's allocator (config.SERVER_ENV: it returns memory after large requests).
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	# MTCNN face detector; --no-deps: its pins (torch<2.3) are old, it runs with the torch above.
	$(BIN)/pip install --quiet --no-deps facenet-pytorch==2.6.0
	$(BIN)/pip install --quiet --no-deps -e .
	command -v espeak-ng >/dev/null || (apt-get update -qq && apt-get install -y -qq espeak-ng) || \
		echo "espeak-ng not installed: tests that synthesise speech will fail"
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) || \
		echo "chromium not installed: the web page's browser test is skipped"
	test -e /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 || (apt-get update -qq && apt-get install -y -qq libjemalloc2) || \
		echo "libjemalloc2 not installed: the server keeps memory after large requests (tests/test_oversize.py fails)"
	touch $(STAMP)

# Configs, code copies and the TorchScript export of weights/; a change to the runtime code alone
# only re-copies it.
$(MODELS): $(STAMP) $(wildcard python_backend/fv2es/models/*.py) $(wildcard weights/*.pt) build/export.py build/repository.py \
		python_backend/fv2es/config.py python_backend/fv2es/pipeline.py
	$(BIN)/fv2es-build

$(CODE): $(STAMP) $(RUNTIME) build/repository.py | $(PRELOAD)
	$(BIN)/fv2es-build --configs

# The library preloaded into tritonserver that keeps the admin key off its command line, which every
# local user can read, and the stubs' shared memory private (python_backend/native/fv2es_preload.c;
# config.PRELOAD_LIBRARY). Every target that serves needs $(CODE), hence it there; without it the
# server refuses to start. Rebuilt when its source changes.
$(PRELOAD): python_backend/native/fv2es_preload.c | $(STAMP)
	command -v cc >/dev/null || (apt-get update -qq && apt-get install -y -qq gcc libc6-dev)
	mkdir -p $(@D)
	cc -shared -fPIC -O2 -Wall -Wextra -o $@.tmp $< && mv -f $@.tmp $@

# Retrain the shipped weights from ../shared/data (see MODEL_CARD.md for the time it takes), then
# print the validation metrics and write them into MODEL_CARD.md; `make build` exports them.
train: $(STAMP)
	$(BIN)/fv2es-train all

# The weights for the other ASR model, the multilingual Whisper base (weights/whisper-base/: its audio
# branch, fusion, group model and face selection; visual and text are shared), each speech clip encoded
# once. To serve it: ASR_MODEL = "packaged:whisper-base" in python_backend/fv2es/config.py, `make build`.
train-base: $(STAMP)
	$(BIN)/fv2es-train all --asr-model packaged:whisper-base --speech-packings 0

# The group model fine-tuned on group videos in VGAF's layout (make train-group VGAF=DIR;
# build/training/vgaf.py), through the built repository's encoders; `make build` then serves it.
train-group: $(MODELS)
	$(BIN)/fv2es-train group --vgaf $(VGAF)

evaluate: $(STAMP)
	$(BIN)/fv2es-evaluate --write-card

# Speed: the server against the in-process, two-phase and floor baselines and against an earlier
# version (config.BENCH_EARLIER_VERSION), perf_analyzer at concurrency 1..4 (installs its binary
# once), 10/60/600 s 720p clips -> BENCHMARKS.md (README "Speed" says how long the last run took).
bench: $(MODELS) $(CODE)
	$(BIN)/python benchmarks/run.py

configs: $(STAMP)
	$(BIN)/fv2es-build --configs

clean:
	rm -rf triton_models/*/1/model.pt triton_models/*/1/provenance.json triton_models/*/1/fv2es
