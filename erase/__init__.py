"""erasekit: erase concepts from generative image models, and prove it with numbers.

Import packages: ``erase`` (requests, methods, patches, CLI), ``pipelines``
(model loading and erased pipelines) and ``eval`` (protocols, metrics, reports).

Inside ``erase``: ``erase.core`` is the bottom layer every package imports (errors, files, the patch format,
requests, the registry, the shared loop), ``erase.methods`` one method per file, and the application on top
(``erase.api``, ``erase.batch``, ``erase.export``, ``erase.demo``, ``erase.cli``). The names users need most are
here, loaded on first use so that ``import erase`` (and every CLI command) stays light:
``erase_concept``, ``EraseRequest``, ``ErasurePatch``.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "erase_concept": "erase.api",
    "EraseRequest": "erase.core.request",
    "ErasurePatch": "erase.core.patch",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'erase' has no attribute {name!r}")
