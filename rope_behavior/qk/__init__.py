"""Scoped capture of rotated and unrotated queries and keys, and validation of token inputs."""

from rope_behavior.qk.captured import Captured, LayerQK, capture, stream_layers, validate_tokens

__all__ = ["Captured", "LayerQK", "capture", "stream_layers", "validate_tokens"]
