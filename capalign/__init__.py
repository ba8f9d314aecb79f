"""capalign: train, align, run and judge image captioners."""

__version__ = "0.1.0"
