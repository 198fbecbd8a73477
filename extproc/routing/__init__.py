"""Where an allowed request goes: routing table lookup (live sync arrives with the routing issue)."""
