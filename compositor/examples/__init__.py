"""Material for the demo and the examples, not part of the pipeline.

* ``classical_matte``: a box-prompted classical matte (no learned weights), the demo's
  bring-your-own-matte example and its fallback when the published MODNet could not be obtained.
"""
