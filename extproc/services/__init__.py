"""Thin grpc.aio servicers: decode → pipeline → encode; plus health and admin HTTP."""
