"""The mini worlds erasekit ships and measures itself on, apart from the evaluation that judges them.

A world builds its data, its small models and its judges (``worlds.<name>.train``, ``.check``) and plugs into
evaluation only through ``worlds.<name>.plugin``: its protocol, its judges, its paths and its real images
(``eval.worlds``). Worlds import evaluation; evaluation never imports a world (``tests/test_layering.py``).

* ``canvas_mini``: a miniature UnlearnCanvas (11 styles x 10 objects, a tiny Stable Diffusion, classifiers, CLIP);
* ``faces_mini``: procedural cartoon faces with their own StyleGAN2, attribute / identity judges and CLIPs.
"""
