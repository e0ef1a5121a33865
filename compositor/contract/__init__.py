"""The contract every part shares: what crosses a process or network boundary, in one place.

* ``spec``: the networks' and ensembles' tensors (names, dtypes, layouts), the chain
  matting -> blending -> harmonization, the network resolution and its aspect buckets;
* ``stages``: the tensors of the ensemble's own pre- and post-processing models. This is the one
  place that says it: the parameter names of ``compositor.imaging.preprocess`` and ``postprocess``
  *are* these tensor names (``network_*`` at network resolution), so each Python model calls its
  imaging function with the tensors named in its own config, and a rename here is a rename there;
* ``parameters``: config parameter keys, model file names, flavours and defaults that the
  repository generator, the command line and the Python-backend models agree on;
* ``provenance``: the weights' provenance record (kinds, fields), how it is read from a config and
  summarised.

Light modules (no PyTorch, no tritonclient): the client, the Python-backend models inside Triton
and the command-line parsers import them.
"""
