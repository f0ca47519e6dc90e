"""Errors the user can fix: printed by the CLI as one line, exit code 2."""


class EraseError(ValueError):
    """Bad erasure input or state: the message names the problem and the fix."""


class NonFiniteError(EraseError):
    """Training produced NaN/Inf; the last good checkpoint is kept."""
