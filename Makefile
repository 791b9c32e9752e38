# Tubelet — every target creates/reuses the virtual environment itself.
#   make demo   build the sample + synthetic datasets, shard them, pre-train, fine-tune and evaluate a tiny model
#   make test   unit + integration tests on CPU with real Ray / DeepSpeed / MLflow / S3
# GPU users pick their torch build:  make test TORCH_SPEC="torch==2.5.1" TORCH_INDEX=https://download.pytorch.org/whl/cu124

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip install -q -c requirements/constraints.txt
STAMP       := $(VENV)/.tubelet-installed
DATA        ?= data
PYTEST_ARGS ?=
# DeepSpeed JIT-builds its CPU ops (shm comm) on first use. Keep the build beside this venv: the
# default ~/.cache/torch_extensions is shared by every venv on the machine, and a build killed in
# one of them leaves a lock file that makes every later DeepSpeed start there wait forever.
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions

.PHONY: gpu-smoke setup browser bench-pretrain-value bench-distill test test-reliability test-unit test-integration test-slow demo bench plan clean-data help cluster-up cluster-down pretrain finetune evaluate predict extract vit-g-step submit status logs stop mlflow mlflow-stop

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"
	@echo; echo "jobs (python -m jobs.NAME; make submit JOB=NAME):"; $(PYTHON) -m jobs --list

# The list is jobs/registry.py, which imports nothing outside the standard library: no venv needed.
.PHONY: jobs
jobs: ## the jobs of jobs/ (name, config class, Ray Train, what it does), from jobs/registry.py
	@$(PYTHON) -m jobs --list

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	# DeepSpeed builds from source against the torch above; build isolation would fetch another torch.
	$(PIP) --no-build-isolation "deepspeed>=0.15"
	$(PIP) -e ".[test,scenes]"  # scenes: PySceneDetect + OpenCV (headless), so the scene-cut test runs here too
	# decord2 replaced decord 0.6.0 and installs the same module: drop a decord 0.6.0 an older setup left
	# (it would shadow or break decord2's files), then rewrite decord2's files.
	if $(PY) -m pip show -q decord >/dev/null 2>&1; then $(PY) -m pip uninstall -q -y decord && \
	  $(PIP) --force-reinstall --no-deps "decord2; platform_machine == 'x86_64'"; fi
	touch $@

setup: $(STAMP) ## create .venv and install everything

# Debian's chromium drives the MLflow UI screenshot test (tests/integration/test_pipeline_job.py); installed once, as root, with apt-get.
browser: ## install Debian's chromium if missing (root + apt-get): the MLflow UI screenshot test needs it
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; }; } || \
	  { echo "browser: chromium is missing and could not be installed (needs root and apt-get); install Debian's chromium" >&2; exit 1; }

test: $(STAMP) browser ## unit + integration tests (what CI runs)
	$(PY) -m pytest tests -m "not slow" $(PYTEST_ARGS)

test-unit: $(STAMP) ## unit tests only (seconds)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-reliability: $(STAMP) ## fault injection only: kill -9, S3 outage, corrupt shards, hostile input, secrets, bindings (minutes)
	$(PY) -m pytest tests/reliability -m reliability $(PYTEST_ARGS)

test-slow: $(STAMP) ## long cases left out of make test (minutes): the pre-training-value benchmark end to end at smoke size
	$(PY) -m pytest tests -m slow $(PYTEST_ARGS)

demo: $(STAMP) ## datasets -> one pipeline job: shard -> pre-train -> fine-tune -> evaluate (+ random-init baseline)
	$(PY) -m jobs.dataset --config dataset/sample --set dataset.output=$(DATA)/sample
	$(PY) -m jobs.dataset --config dataset/synthetic --set dataset.output=$(DATA)/synthetic
	$(PY) -m jobs.shard --config shard/default --set shard.manifest=$(DATA)/sample/manifest.csv --set shard.output=$(DATA)/shards/sample
	$(PY) -m jobs.pipeline --config pipeline/demo --set shard.manifest=$(DATA)/synthetic/manifest.csv --set shard.output=$(DATA)/shards/synthetic $(DEMO_ARGS)

demo-progressive: $(STAMP) ## progressive training: the demo's target + two labelled hybrid sets -> shard -> pre-train -> post-pre-train -> fine-tune -> evaluate
	$(PY) -m jobs.dataset --config dataset/synthetic --set dataset.output=$(DATA)/synthetic
	$(PY) -m jobs.dataset --config dataset/motion_a --set dataset.output=$(DATA)/motion_a
	$(PY) -m jobs.dataset --config dataset/motion_b --set dataset.output=$(DATA)/motion_b
	$(PY) -m jobs.shard --config shard/default --set shard.manifest=$(DATA)/motion_a/manifest.csv --set shard.output=$(DATA)/shards/motion_a
	$(PY) -m jobs.shard --config shard/default --set shard.manifest=$(DATA)/motion_b/manifest.csv --set shard.output=$(DATA)/shards/motion_b
	$(PY) -m jobs.pipeline --config pipeline/progressive --set shard.manifest=$(DATA)/synthetic/manifest.csv --set shard.output=$(DATA)/shards/synthetic --set postpretrain.data.sources=$(DATA)/shards/motion_a,$(DATA)/shards/motion_b $(DEMO_ARGS)

bench-pretrain-value: $(STAMP) ## does pre-training help? pre-trained vs random init, budget chosen on val (~15 min per seed): [SEEDS=0,1,2 FT_STEPS=300]
	$(PY) -m benchmarks.bench_pretrain_value $(if $(SEEDS),--seeds $(SEEDS)) $(if $(FT_STEPS),--finetune-steps $(FT_STEPS) --tag ft$(FT_STEPS))

plan: $(STAMP) ## parameters, FLOPs and memory per GPU: make plan MODEL=vit_g
	$(PY) -m jobs.plan --set model.name=$(or $(MODEL),vit_b)

bench-distill: $(STAMP) ## does distillation help? a pre-trained vit_tiny student distilled from a pre-trained + fine-tuned vit_tiny_big teacher vs fine-tuned directly, same budget, 3 seeds -> benchmarks/results/distill.json [SEEDS=0,1,2]
	$(PY) -m benchmarks.bench_distill $(if $(SEEDS),--seeds $(SEEDS))

bench: $(STAMP) ## benchmarks -> benchmarks/results/ (JSON, README.md table, PNG plots): make bench [ONLY=data,augment,model,flops,zero,shard,plan,ingest,handoff,startup,decoders]
	$(PY) -m benchmarks.report $(if $(ONLY),--only $(ONLY))

# The GPU check (no GPU in CI: CI runs the same code with CPU=1, see tests/integration/test_gpu_smoke.py).
gpu-smoke: $(STAMP) ## pre-train, fine-tune, evaluate, extract on this node's GPUs (ViT-S 16x224, bf16, ZeRO-2) -> benchmarks/results/gpu_smoke.json; CPU=1: tiny fp32 run on CPU
	$(PY) -m benchmarks.gpu_smoke $(if $(CPU),--cpu) $(if $(GPUS),--gpus $(GPUS))

# Stand-alone stages. SET="k=v k2=v2" adds --set overrides (no spaces inside a value). Weights bring
# their recipe: fine-tuning from the demo's pre-training (8 px patches, sampling rate 4), evaluating
# or extracting its classifier take patch size and sampling rate from the model card.
SET     ?=
pretrain: $(STAMP) ## pre-train on the synthetic shards (make demo first): make pretrain CONFIG=pretrain/demo [SET="train.steps=100"]
	$(PY) -m jobs.pretrain --config $(or $(CONFIG),pretrain/demo) $(foreach s,$(SET),--set '$(s)')

finetune: $(STAMP) ## fine-tune on labelled shards: make finetune INIT=runs/pipeline/demo/pretrain [SET="train.steps=100"] (INIT=random: a random-init baseline; INIT is required)
	$(PY) -m jobs.finetune --config $(or $(CONFIG),finetune/demo) $(if $(INIT),--set model.init=$(INIT)) $(foreach s,$(SET),--set '$(s)')

evaluate: $(STAMP) ## multi-view evaluation: make evaluate [MODEL=runs/pipeline/demo/finetune]
	$(PY) -m jobs.evaluate --config $(or $(CONFIG),evaluate/demo) $(if $(MODEL),--set model.init=$(MODEL)) $(foreach s,$(SET),--set '$(s)')

extract: $(STAMP) ## encoder features of a shard set: make extract [MODEL=runs/pipeline/demo/finetune]
	$(PY) -m jobs.extract --config $(or $(CONFIG),extract/demo) $(if $(MODEL),--set model.init=$(MODEL)) $(foreach s,$(SET),--set '$(s)')

predict: $(STAMP) ## classify videos: make predict MODEL=models:/name@champion VIDEOS="a.mp4 b.mp4"
	$(PY) -m jobs.predict --model $(MODEL) $(VIDEOS)

CLUSTER_DIR ?= .cluster/local
cluster-up: $(STAMP) ## local two-node Ray cluster (head + worker); then: source $(CLUSTER_DIR)/env
	TUBELET_CLUSTER_DIR=$(CLUSTER_DIR) TUBELET_RAY=$(VENV)/bin/ray bash cluster/local/up.sh

cluster-down: ## stop the processes cluster-up started (by pid) and remove its state dir
	TUBELET_CLUSTER_DIR=$(CLUSTER_DIR) bash cluster/local/down.sh

# Jobs on a cluster (RAY_ADDRESS, token auth: see cluster/README.md). SET as for the stand-alone stages.
JOB     ?= pretrain
submit: $(STAMP) ## submit a job to the cluster at RAY_ADDRESS and follow it: make submit JOB=pretrain CONFIG=pretrain/demo SET="train.steps=100"
	$(PY) -m jobs.submit $(JOB) --config $(or $(CONFIG),$(JOB)/demo) $(foreach s,$(SET),--set '$(s)') $(if $(NO_FOLLOW),--no-follow)

status: $(STAMP) ## jobs on the cluster, newest first; one job with JOB_ID=...
	$(PY) -m jobs.submit $(if $(JOB_ID),status $(JOB_ID),list)

logs: $(STAMP) ## a job's log: make logs JOB_ID=raysubmit_... [FOLLOW=1]
	$(PY) -m jobs.submit logs $(JOB_ID) $(if $(FOLLOW),--follow)

stop: $(STAMP) ## stop a job on the cluster: make stop JOB_ID=raysubmit_...
	$(PY) -m jobs.submit stop $(JOB_ID)

# MLflow tracking server (SQLite backend, proxied artifacts), bound to 127.0.0.1 unless MLFLOW_HOST says otherwise.
MLFLOW_HOST      ?= 127.0.0.1
MLFLOW_PORT      ?= 5000
MLFLOW_BACKEND   ?= sqlite:///$(CURDIR)/runs/mlflow.db
MLFLOW_ARTIFACTS ?= $(CURDIR)/runs/mlflow-artifacts
MLFLOW_DIR       ?= .cluster/mlflow
mlflow: $(STAMP) ## MLflow server on runs/mlflow.db (pid in .cluster/mlflow): make mlflow [MLFLOW_PORT=5000 MLFLOW_ARTIFACTS=s3://bucket/mlflow]
	TUBELET_MLFLOW_DIR=$(MLFLOW_DIR) TUBELET_MLFLOW_HOST=$(MLFLOW_HOST) TUBELET_MLFLOW_PORT=$(MLFLOW_PORT) \
	TUBELET_MLFLOW_BACKEND=$(MLFLOW_BACKEND) TUBELET_MLFLOW_ARTIFACTS=$(MLFLOW_ARTIFACTS) \
	TUBELET_MLFLOW=$(VENV)/bin/mlflow bash cluster/mlflow/serve.sh

mlflow-stop: ## stop the server make mlflow started (its process group, by the recorded pid)
	TUBELET_MLFLOW_DIR=$(MLFLOW_DIR) bash cluster/mlflow/stop.sh

vit-g-step: $(STAMP) ## ViT-g (1B) ZeRO-3 + NVMe optimizer offload steps on CPU -> benchmarks/results/vit_g_step.json (needs libaio-dev)
	$(PY) -m benchmarks.vit_g_step --config jobs/configs/pretrain/vit_g_offload.toml --ranks $(or $(RANKS),2) --steps 3 --label zero3-bf16-nvme-optimizer-$(or $(RANKS),2)ranks

clean-data: ## remove generated data (not runs/)
	rm -rf $(DATA)
