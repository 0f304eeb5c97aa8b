"""Shared test set-up: deterministic seeds and a non-interactive matplotlib backend."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed_everything():
    """Unseeded torch.randn in a test would make it flaky; fix the global seed per test."""
    torch.manual_seed(1234)
    yield
