"""Export: torch -> ONNX FP32 -> FP16 ONNX -> TensorRT engines, each step checked.

The steps are small importable functions, each raising on failure:

* ``onnx_export.export_fp32``: a contract model (``networks.contract.contract_models``) -> FP32 ONNX;
* ``parity.check_fp32_parity`` / ``parity.check_fp16_parity`` / ``parity.check_against_fp32_onnx``:
  Polygraphy's comparator on Polygraphy runners (eager PyTorch, ONNX Runtime, a TensorRT engine),
  with PSNR and finiteness from ``metrics``;
* ``fp16.save_mixed_precision`` with a policy from ``fp16.precision_ladder``;
* ``headroom.check_fp16_headroom``: what runs in FP16 fits FP16's range;
* ``readiness.check_tensorrt_readiness`` / ``readiness.check_profile_against_triton``;
* ``tensorrt.build_engine`` (Polygraphy's TensorRT loaders, lazy TensorRT) and the equivalent
  ``trtexec``/``polygraphy`` lines.

``exporter.export_network`` runs them for one network (the GPU benchmark calls it for its engines);
``exporter.export_all`` runs it for the three networks and writes ``export_report.json``; the
``compositor export`` command is its command line. ``layout`` names the files of an export folder.
Nothing here imports ``compositor.serving``.
"""
