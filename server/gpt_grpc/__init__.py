"""gpt-grpc: a gRPC gateway to OpenAI-compatible chat models."""
