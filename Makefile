# objcache — `make run` starts a node; `make test` runs the whole suite. Both set themselves up.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
DATA    ?= var
SEEDS   ?= 5000
FUZZ_SCALE ?= 100
MODEL_SEQS ?= 1000
MODEL_OPS ?= 80
ARGS    ?=

.PHONY: all setup host run test test-fast lint sim fuzz model bench clean faults

all: test

# The virtualenv, rebuilt when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $@

host:
	@.ci/setup-host

setup: host $(STAMP)

# One node serving the tree of a local directory as its bucket (a one-node cluster: the bucket,
# the cache and the write-back are the cluster's), NFS on 127.0.0.1:2049, exported to this
# machine as configs/local.toml says (loopback only, any source port, no root squash).
run: setup
	@mkdir -p $(DATA)/bucket
	@test -s $(DATA)/cluster-secret || $(BIN)/python -c 'import secrets; print(secrets.token_hex(32))' > $(DATA)/cluster-secret
	@chmod 600 $(DATA)/cluster-secret
	@echo "objcache: data in ./$(DATA), the bucket is ./$(DATA)/bucket; mount from this host with:"
	@echo "  sudo mount -t nfs -o vers=3,proto=tcp,port=2049,mountport=2049,nolock 127.0.0.1:/ /mnt/objcache"
	$(BIN)/objcache serve --config configs/local.toml --data-dir $(DATA) --node-id 1 \
		--listen 127.0.0.1:2050 \
		--peers 1=127.0.0.1:2050 --cluster-secret-file $(DATA)/cluster-secret \
		--store file://$(abspath $(DATA))/bucket $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The whole suite: unit, interaction scripts, simulation, real clients, the kernel client.
# The slowest tests are listed at the end: the suite must stay within CI's ~20 minutes.
test: setup lint
	$(BIN)/python -m pytest -q --durations=15 $(ARGS)

# Everything but the real-process tiers, for a quick loop while editing.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration and not kernel" $(ARGS)

# Long simulation runs: make sim SEEDS=20000
sim: $(STAMP)
	OBJCACHE_SIM_SEEDS=$(SEEDS) $(BIN)/python -m pytest -q tests/sim $(ARGS)

# Long fuzzing of the NFS/MOUNT/portmap front end and the node RPC plane (tests/fuzz; a short
# run is part of `make test`): FUZZ_SCALE times the short run's examples per property, a
# summary of cases and failures at the end. make fuzz FUZZ_SCALE=1000
fuzz: $(STAMP)
	OBJCACHE_FUZZ=long OBJCACHE_FUZZ_SCALE=$(FUZZ_SCALE) $(BIN)/python -m pytest -q \
		-W ignore::hypothesis.errors.HypothesisWarning tests/fuzz $(ARGS)

# The long model check (tests/model; a short run is part of `make test`): MODEL_SEQS random
# sequences of up to MODEL_OPS ops per server through libnfs, a tenth as many through the
# kernel client (at least 20), on one node and on a 3-group cluster, each compared with a local directory.
# make model MODEL_SEQS=2000
model: $(STAMP)
	OBJCACHE_MODEL_LONG=1 OBJCACHE_MODEL_SEQS=$(MODEL_SEQS) OBJCACHE_MODEL_OPS=$(MODEL_OPS) \
		$(BIN)/python -m pytest -q tests/model $(ARGS)

# Fault campaigns (tests/faults/campaign.py): a cluster whose nodes run in network namespaces
# over SeaweedFS, NFS clients with a model of every acknowledgement, and kill -9, link cuts
# (a leader isolated with a minority), S3 down/throttled/slow, a full cache disk and an old data
# directory; then read-back, fsck, drain and the bucket checked. Needs root (ip netns). The
# short run is part of `make test`. make faults ARGS="--seed 7 --only mixed"
faults: setup
	$(BIN)/python tests/faults/campaign.py $(ARGS)

bench: setup
	OBJCACHE_BENCH_DEPS=1 .ci/setup-host
	$(BIN)/python bench/nfs_gateway.py $(ARGS)
	$(BIN)/python bench/raft.py $(ARGS)
	$(BIN)/python bench/namespace.py $(ARGS)
	$(BIN)/python bench/model_startup.py $(ARGS)
	$(BIN)/python bench/elasticity.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
