"""The package version: one place, read by the CLI, the reports and the packaging metadata."""

__version__ = "0.2.0"
