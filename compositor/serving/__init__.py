"""Serving: Triton model-repository generation and the launcher for the Triton server binary.

* ``conventions``: names and defaults the generator, the command line and the models share (light);
* ``stages``: the tensors of the ensemble's own pre/post-processing models (light);
* ``configs``: every ``config.pbtxt`` as data, validated through Triton's schema;
* ``repository``: writes the repository (configs, model sources, network files from an export);
* ``python_models``: the Python-backend models the repository's ``model.py`` files import;
* ``installation``: finds the Triton binary in the ``nvidia-pytriton`` wheel and what it needs;
* ``server``: runs it (start, readiness, stop); ``server_log``: where its log is kept, reading it.
"""
