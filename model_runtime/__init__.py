"""Code shared by the Triton python-backend models in model_repository/ (importable and testable
without Triton: nothing here imports triton_python_backend_utils)."""
