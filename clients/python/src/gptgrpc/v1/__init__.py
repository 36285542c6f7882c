"""Generated from proto/gptgrpc/v1 by `make proto`; do not edit."""
