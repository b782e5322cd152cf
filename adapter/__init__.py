"""The gRPC adapter: inference.v1.InferenceService in front of NVIDIA Triton."""
