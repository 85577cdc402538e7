# mailsync — see README.md. Every target installs what it needs through the project's own scripts.
SHELL := /bin/bash
LOCAL := deploy/local
VENV  := .venv/bin

.PHONY: help install run stop status test test-unit lint contracts bench clean
.PHONY: images deploy-check

help:
	@echo "make run       install what is missing, start Kafka, FerretDB, the mail lab and the 4 services"
	@echo "make stop      stop the services and the stack (no process left behind)"
	@echo "make test      the whole suite: unit + integration against the real local stack"
	@echo "make lint      ruff + mypy --strict"
	@echo "make contracts regenerate contracts/asyncapi.json and contracts/schemas/"
	@echo "make status    what is running"
	@echo "make images    build the four service images (needs Docker; IMAGE_REPO, IMAGE_TAG)"
	@echo "make deploy-check  hadolint + helm lint + helm template | kubeconform -strict (pinned tools)"
	@echo "make chaos     SIGKILLs + Kafka/FerretDB/Dovecot restarts under load on a private stack; RESULT lost=… duplicates=…"
	@echo "make soak      10 min of steady traffic with RSS sampled per service; RESULT …slope_mb_per_min=…"

install:
	@$(LOCAL)/python.sh
	@$(LOCAL)/stack.sh install

run:
	@$(LOCAL)/run.sh

stop:
	@$(LOCAL)/services.sh stop
	@$(LOCAL)/stack.sh down

status:
	@$(LOCAL)/stack.sh status || true
	@$(LOCAL)/services.sh status || true

# The integration tests start the servers they need (and stop the ones they started).
test:
	@$(LOCAL)/python.sh
	$(VENV)/pytest

test-unit:
	@$(LOCAL)/python.sh
	$(VENV)/pytest tests/unit

lint:
	@$(LOCAL)/python.sh
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy

contracts:
	@$(LOCAL)/python.sh
	$(VENV)/python -m contracts.generate

clean: stop
	rm -rf .stack .venv

# Container images, one per service (deploy/docker/<service>.Dockerfile, build context = repo root).
IMAGE_REPO ?= mailsync
IMAGE_TAG  ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
images:
	@command -v docker >/dev/null || { echo "make images: docker not found; install Docker, or build with any OCI builder from deploy/docker/*.Dockerfile" >&2; exit 1; }
	@for svc in fetcher linker sender janitor; do \
	  echo "building $(IMAGE_REPO)-$$svc:$(IMAGE_TAG)"; \
	  docker build -f deploy/docker/$$svc.Dockerfile -t $(IMAGE_REPO)-$$svc:$(IMAGE_TAG) . || exit 1; \
	done

# Dockerfiles and the Helm chart, validated with pinned tools installed by deploy/tools.sh.
deploy-check:
	@deploy/check.sh

# P1 (issue #4): initial sync of a seeded Dovecot mailbox vs mbsync (Debian isync) and raw imaplib.
.PHONY: bench-sync
bench-sync:
	@command -v mbsync >/dev/null || { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq isync) >/tmp/mailsync-isync-apt.log 2>&1 \
	  || { echo "make bench-sync: could not install isync (mbsync) with apt; see /tmp/mailsync-isync-apt.log" >&2; exit 1; }; }
	@$(LOCAL)/stack.sh up
	$(VENV)/python bench/sync.py --messages $${MESSAGES:-100000}

# P2 / P3 (issue #4): on a PRIVATE mail lab (/tmp/cb5, ports 41xxx, limits raised; bench/biglab.py) with
# the shared Kafka and FerretDB. P2: delivery → `message received` on Kafka with 1,000 idle inboxes, against
# Dovecot's own IDLE floor. P3: fetcher memory with IDLE_INBOXES idle inboxes (default 10,000).
.PHONY: bench-latency bench-idle
bench-latency:
	@$(LOCAL)/python.sh
	@$(LOCAL)/stack.sh up kafka ferretdb
	$(VENV)/python bench/latency.py --inboxes $${INBOXES:-1000}

bench-idle:
	@$(LOCAL)/python.sh
	@$(LOCAL)/stack.sh up kafka ferretdb
	$(VENV)/python bench/idle.py --inboxes $${IDLE_INBOXES:-10000}

# P5 (issue #5): linking against a directory of 1,000,000 addresses (500,000 records); pure CPU, no stack.
.PHONY: bench-link
bench-link:
	@$(LOCAL)/python.sh
	$(VENV)/python bench/link.py --addresses $${ADDRESSES:-1000000} --messages $${MESSAGES:-50000}

# The real linker service on Kafka + FerretDB: batched consumption vs one record at a time (issue #5).
.PHONY: bench-link-service
bench-link-service:
	@$(LOCAL)/python.sh
	@$(LOCAL)/stack.sh up kafka ferretdb
	$(VENV)/python bench/link_service.py --messages $${MESSAGES:-3000} --baseline-messages $${BASELINE_MESSAGES:-200}

# P6 (issue #6): one sender process through the local Postfix, Sent-copy APPEND to Dovecot; target ≥ 100 msgs/s.
.PHONY: bench-send
bench-send:
	@$(LOCAL)/python.sh
	@$(LOCAL)/stack.sh up
	$(VENV)/python bench/send.py --messages $${MESSAGES:-1000} --baseline $${BASELINE:-200}

# Issue #9: chaos run and soak on a PRIVATE stack instance (/tmp/cx resp. /tmp/cs, ports 24xxx/25xxx),
# never the shared one; see docs/reliability.md. Sizes: CHAOS_MESSAGES, CHAOS_SENDS, CHAOS_KILLS, ...
.PHONY: chaos soak
chaos:
	@$(LOCAL)/python.sh
	@$(LOCAL)/stack.sh install
	$(VENV)/python bench/chaos.py

soak:
	@$(LOCAL)/python.sh
	@$(LOCAL)/stack.sh install
	$(VENV)/python bench/soak.py
