"""itmflow core: the small pieces every other package may import (errors, files, safe loading,
configuration, provenance). It depends on nothing of ours, so it never creates an import cycle."""

__version__ = "0.1.0"
