"""Tests of tuner.study: create and resume, warm starts, confirmation, results, best_config()."""
