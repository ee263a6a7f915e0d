"""Command-line entry points: ``crisp`` (the daemon and its admin commands) and ``crispctl``."""
