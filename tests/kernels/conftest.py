"""Pytest configuration of the kernel tests."""

from __future__ import annotations


def pytest_configure(config):
    # GPU-only tests: `pytest -m cuda tests/kernels` runs them, `-m "not cuda"` skips them;
    # without a CUDA device they are collected and skipped.
    config.addinivalue_line("markers", "cuda: needs an NVIDIA GPU and the CUDA backend")
