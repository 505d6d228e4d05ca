"""Detector configs of the standard protocols (configs/) and speed benchmarks (speed/)."""
