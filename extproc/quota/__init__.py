"""Quotas: request rates, token rates, calendar budgets and concurrency caps, atomic in Redis."""
