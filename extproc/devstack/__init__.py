"""What ``extproc demo`` runs besides the sidecar: a demo OIDC issuer and demo model upstreams."""
