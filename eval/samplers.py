"""The protocol's sampler, applied to a pipeline for the duration of generation.

A protocol names its sampler ("ddim" for UnlearnCanvas); the pipeline a user
loads carries whatever scheduler it was saved with (PNDM for SD v1.5, Euler
for many community models). Evaluation must use the protocol's, so
``protocol_scheduler`` swaps in the named scheduler, built with
``Cls.from_config(pipe.scheduler.config)`` (same betas, offsets and spacing),
and restores the pipeline's own scheduler object afterwards.

The registry maps short names to diffusers class names, so this module and
``eval.protocols`` can validate names without importing diffusers.
"""

from __future__ import annotations

from contextlib import contextmanager

SAMPLERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
}


def scheduler_class(name: str):
    """The diffusers scheduler class registered under ``name``."""
    import diffusers

    if name not in SAMPLERS:
        from erase.core.errors import EraseError

        raise EraseError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
    return getattr(diffusers, SAMPLERS[name])


@contextmanager
def protocol_scheduler(pipe, name: str):
    """Use sampler ``name`` on ``pipe`` inside the block; yields what was carried and what was applied.

    The yielded dict (``sampler``, ``applied``, ``pipeline_scheduler``) goes into the report, so a
    reader sees that, say, an Euler-carrying pipeline was evaluated with DDIM as the protocol says.
    """
    own = pipe.scheduler
    cls = scheduler_class(name)
    pipe.scheduler = cls.from_config(own.config)
    try:
        yield {"sampler": name, "applied": cls.__name__, "pipeline_scheduler": type(own).__name__}
    finally:
        pipe.scheduler = own
