"""Runs no torch operator at all."""

print("hello, no tensors here")
