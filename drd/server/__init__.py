"""The daemon's HTTP endpoint: probes and metrics, the authenticated API, tokens and roles,
and the audit trail of what was asked of it."""
