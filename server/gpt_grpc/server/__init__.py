"""The asyncio gRPC server over the GPT core."""
