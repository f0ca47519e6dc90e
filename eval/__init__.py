"""erasekit evaluation: protocols, metrics, grids and reports (the mini worlds plug in through eval.worlds).

Import submodules explicitly (``from eval.metrics import ...``); this package
name shadows the ``eval`` builtin only when imported bare.
"""
