"""Subcommands of `eta` that reach into the API and the workers (imported lazily)."""
