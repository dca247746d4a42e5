"""Inference recipes that load a model directory and return PIL images."""
