"""Command groups of the ``itmflow`` app; each module exposes ``register(app)``."""
