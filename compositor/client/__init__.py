"""Client library for the Triton ensembles (gRPC and HTTP).

* ``remote``: ``CompositorClient``, one connection to one server; its errors (``ClientError`` and
  subclasses) and URL rules;
* ``deployment``: what a server deploys (ensemble and network names, limits, resolution, the
  weights' provenance), read from the server;
* ``pool``: ``CompositorPool``, many requests in flight over one or several servers, answered in
  order, with retries and failover;
* ``shared_memory``: system shared memory regions for frames when client and server share a host;
* ``provenance``: reading the weights' provenance and warning about untrained networks;
* ``batch``, ``video``: folders and videos through a pool (``compositor composite --url``).

Importing this package imports none of them; ``tritonclient`` loads when a client is made.
"""
