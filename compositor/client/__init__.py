"""Client library for the Triton ensembles (gRPC and HTTP).

* ``remote``: ``CompositorClient``, one connection to one server;
* ``errors``: ``ClientError`` and its subclasses; ``urls``: server addresses per protocol;
* ``deployment``: what a server deploys (ensemble and network names, limits, resolution, the
  weights' provenance), read from the server;
* ``pool``: ``CompositorPool``, many requests in flight over one or several servers, answered in
  order, with retries and failover;
* ``shared_memory``: system shared memory regions for frames when client and server share a host;
* ``batch``, ``video``: folders and videos through a pool (``compositor composite --url``).

It depends on ``compositor.contract`` (tensor names, the weights' provenance record), never on
``compositor.serving``. Importing this package imports none of them; ``tritonclient`` loads when a client is made.
"""
