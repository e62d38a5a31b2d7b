"""Tests of tuner.execution: the worker loop, Ray, training, stacked trials, user code."""
