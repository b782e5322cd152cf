"""The error a model answers a bad request with, free of torch (shared by every text model)."""

from __future__ import annotations


class InvalidRequest(ValueError):
    """A request the model refuses; the message names the field (becomes INVALID_ARG)."""
