"""Policy config: YAML → validated, typed, frozen snapshot; hot reload keeps the last good one."""
