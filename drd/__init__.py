"""drd: disaster-recovery and backup-verification daemon."""

__version__ = "0.2.0"
