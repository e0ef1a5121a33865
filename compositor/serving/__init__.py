"""Serving: Triton model-repository generation and the launcher for the Triton server binary.

* ``configs``: every ``config.pbtxt`` as data, validated through Triton's schema;
* ``repository``: writes the repository (configs, model sources, network files from an export);
* ``python_models``: the Python-backend models the repository's ``model.py`` files import;
* ``installation``: finds the Triton binary in the ``nvidia-pytriton`` wheel and what it needs;
* ``server``: runs it (start, readiness, stop); ``server_log``: where its log is kept, reading it;
* ``processes``: the server's process group, its model processes and their /dev/shm regions;
* ``supervisor``: keeps it serving (stop signals, dead model processes, replica restarts);
* ``replicas``: several servers over one repository.

The names these share with the client and the models (tensors, stages, config parameters, the
weights' provenance) are in ``compositor.contract``.
"""
