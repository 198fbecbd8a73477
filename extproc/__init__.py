"""extproc: the hot path of an AI API gateway, as a gRPC sidecar for Envoy."""

__version__ = "0.1.0"
