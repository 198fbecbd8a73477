"""The only package that touches Envoy protobufs (xds-protos): codecs for ext_proc and ext_authz."""
