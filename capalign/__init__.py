"""capalign: train, align, run and judge image captioners.

The Python API is `capalign.Captioner` (load a run, caption images, score image–text pairs) and
`capalign.evaluate` (what `capalign evaluate` runs); both live in capalign.api and are imported on
first use, so `import capalign` (and `capalign --help`) does not import torch.
"""

__version__ = "0.1.0"

_LAZY = {"Captioner": "capalign.api", "Evaluation": "capalign.api", "ScoredCaption": "capalign.api",
         "evaluate": "capalign.api"}
__all__ = ["Captioner", "Evaluation", "ScoredCaption", "evaluate", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib  # deferred: only on first access to a lazy attribute

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'capalign' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
