"""Tests of tuner.search: the space, samplers, optimizers, schedules and vectorized rules."""
