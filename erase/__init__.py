"""erasekit: erase concepts from generative image models, and prove it with numbers.

Import packages: ``erase`` (requests, methods, patches, CLI), ``pipelines``
(model loading and erased pipelines) and ``eval`` (protocols, metrics, reports).
"""

__version__ = "0.1.0"
