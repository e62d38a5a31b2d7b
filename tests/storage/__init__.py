"""Tests of tuner.storage: URLs, the retrying storage, Optuna's internals, artifacts."""
