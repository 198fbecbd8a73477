"""Pure domain logic: no I/O, no Envoy protobufs, no clocks except those passed in."""
