"""The streaming merge engine: chunked reads, tensor methods, sharded writes."""

from .execute import execute

__all__ = ["execute"]
