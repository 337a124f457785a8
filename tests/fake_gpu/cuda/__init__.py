"""Stands in for NVIDIA's `cuda` package in a dry run without a GPU: see bindings/driver.py."""
