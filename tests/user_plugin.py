"""A user's own norm, optimizer and model, as a plug-in module would hold them (used by
tests/test_extending.py; not a test module itself)."""

from __future__ import annotations

import math

import torch
from torch import nn

import steepest
from steepest.algorithms import SteepestDescentRule
from steepest.norms import Norm, flat_params


class ScaledL2(Norm):
    """‖x‖ = 2‖x‖₂: dual ‖g‖₂/2, steepest direction g/(2‖g‖₂). Only value, dual and
    direction are given; the stacked forms come from the base class."""

    name = "user-scaled-l2"

    def __call__(self, xs):
        return 2 * flat_params(xs).norm()

    def dual(self, gs):
        return flat_params(gs).norm() / 2

    def direction_and_dual(self, gs):
        n = flat_params(gs).norm()
        return [g / (2 * n) for g in gs], n / 2

    def direction(self, gs):
        return self.direction_and_dual(gs)[0]


class TwoLayer(nn.Module):
    """f(x) = v·relu(Wx), bias-free: 2-homogeneous."""

    def __init__(self, d, width=8, seed=0, dtype=torch.float64, init_scale=1.0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        W = torch.randn(width, d, generator=gen, dtype=dtype) / math.sqrt(d)
        v = torch.randn(width, generator=gen, dtype=dtype) / math.sqrt(width)
        self.W, self.v = nn.Parameter(init_scale * W), nn.Parameter(init_scale * v)

    def forward(self, x):
        return torch.relu(x @ self.W.T) @ self.v


def register() -> None:
    """What a user's plug-in does on import: name its objects for configs."""
    steepest.register_norm("user-scaled-l2", ScaledL2)
    steepest.register_algorithm("user-scaled-gd", lambda: SteepestDescentRule(ScaledL2()))
    steepest.register_model("user-two-layer", TwoLayer)
