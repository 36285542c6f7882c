"""`from gpt_grpc.gpt import GPT`: the original module's import path (the class lives in compat.py)."""

from .compat import GPT

__all__ = ["GPT"]
