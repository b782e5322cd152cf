"""The OpenAI-compatible HTTP front (FastAPI on uvicorn), over the same core as the gRPC front."""
