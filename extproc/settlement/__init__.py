"""Settlement: "request ended" events → quota true-up, lease release, usage records."""
