# The two commands of the README: `make run` and `make test`. Both install what they need.
.PHONY: run stop test lint bootstrap

bootstrap:
	@deploy/bootstrap.sh

run: bootstrap
	@.venv/bin/fedilake run

stop: bootstrap
	@.venv/bin/fedilake run --stop

lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

test: bootstrap
	@deploy/test.sh
