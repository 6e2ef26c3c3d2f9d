"""The team's runbooks: the git side (mirroring, pulling into homes)."""
