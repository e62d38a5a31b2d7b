"""Tests of tuner.views: the terminal display, the report and the dashboard."""
