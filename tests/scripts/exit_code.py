"""Exits with its own status 3 before training."""

import sys

import torch

torch.ones(2).sum()
sys.exit(3)
