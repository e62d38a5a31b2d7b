"""Tests of tuner.workloads: the built-in workloads and data sets."""
