"""Proof that backups restore: one restore test, its sealed report, failover drills, and the
scratch environments they restore into."""
