# mailsync — see README.md. Every target installs what it needs through the project's own scripts.
SHELL := /bin/bash
LOCAL := deploy/local
VENV  := .venv/bin

.PHONY: help install run stop status test test-unit lint contracts bench clean

help:
	@echo "make run       install what is missing, start Kafka, FerretDB, the mail lab and the 4 services"
	@echo "make stop      stop the services and the stack (no process left behind)"
	@echo "make test      the whole suite: unit + integration against the real local stack"
	@echo "make lint      ruff + mypy --strict"
	@echo "make contracts regenerate contracts/asyncapi.json and contracts/schemas/"
	@echo "make status    what is running"

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
