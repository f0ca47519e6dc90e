"""erasekit evaluation: protocols, metrics, grids, reports and the mini worlds.

Import submodules explicitly (``from eval.metrics import ...``); this package
name shadows the ``eval`` builtin only when imported bare.
"""
