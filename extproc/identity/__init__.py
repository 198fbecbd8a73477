"""Turning a request's credential into a verified ``Identity`` (OIDC/JWT arrives with the identity issue)."""
