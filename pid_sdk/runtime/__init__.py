"""Backends (one small class each, imported where they are used: most need optional packages) and engine
selection. Nothing is imported here, so the CLI's argument parsing stays free of torch."""
