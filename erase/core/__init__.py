"""The bottom layer that every package imports: errors, files and atomic writes, the patch format, model
components, requests, the method registry, the shared training loop and the data it trains on. Nothing here
imports a method, the API, the CLI, ``pipelines``, ``eval`` or a world (``tests/test_layering.py``)."""
