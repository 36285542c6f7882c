"""Generated stubs of the gpt-grpc contract (package gptgrpc.v1)."""
