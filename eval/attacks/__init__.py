"""White-box attacks on an erased model: can the concept be brought back by searching the prompt?

Registered like methods (one file each): ``unlearndiffatk`` (discrete prefix tokens), ``embedding`` (a soft
prompt, the upper bound) and ``textual_inversion`` (one learned word). ``run_attack`` attacks one target of a
protocol and writes attack.json / attack.md / grid.png; see ``eval.attacks.run``.
"""

from .registry import get_attack, list_attacks, make_attack, register_attack

__all__ = ["get_attack", "list_attacks", "make_attack", "register_attack"]
