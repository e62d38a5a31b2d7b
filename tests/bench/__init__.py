"""Tests of the benchmark scripts' helpers (bench/)."""
