"""Typed Python client for the gpt-grpc gateway."""
