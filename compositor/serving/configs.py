"""Triton model configurations, built as data from the tensor spec and validated by Triton's schema.

Every ``config.pbtxt`` starts as a plain dict (field names as in Triton's ``model_config.proto``),
goes through ``json_format.ParseDict`` into ``model_config_pb2.ModelConfig`` (so an unknown field,
a wrong enum or a wrongly typed value fails here, at generation time, not when Triton loads it)
and is written with ``text_format``. Nothing in a config is typed by hand: names, data types and
shapes come from ``compositor.contract.spec`` (networks and ensembles) and ``compositor.contract.stages``
(pre/post-processing).

Flavours (how the three networks run; pre/post-processing are Python models in every flavour):

* ``python``: Python-backend models running ONNX Runtime on the FP32 ONNX; the embedded default,
  served by the CPU Triton in the ``nvidia-pytriton`` wheel (which has only the Python backend).
* ``onnxruntime``: Triton's ``onnxruntime_onnx`` platform on the FP32 ONNX; on CPU by default, or
  on GPU with the TensorRT execution accelerator in FP32, with the export's profile and an engine
  cache (``trt_accelerator``).
* ``tensorrt``: ``tensorrt_plan`` FP16 engines (strongly typed, FP32 I/O) on GPU; production.

Each network's config carries where its weights came from (``PROVENANCE_PARAMETER``, a JSON
string): the record of the export the model files were copied from, or kind ``unknown`` when the
repository is generated without one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import np_to_triton_dtype

from compositor.errors import CompositorError
from compositor.contract.parameters import (
    BUCKETS_PARAMETER,
    DEFAULT_INTRA_OP_THREADS,
    DEFAULT_TRT_ACCELERATOR_CACHE,
    DEFAULT_MAX_QUEUE_DELAY_US,
    FLAVORS,
    INTRA_OP_THREADS_PARAMETER,
    RESOLUTION_PARAMETER,
)
from compositor.contract.provenance import PROVENANCE_KINDS, PROVENANCE_PARAMETER, as_provenance_record, unknown_provenance
from compositor.contract.stages import OPTIONAL_INPUTS, POSTPROCESS, PREPROCESS
from compositor.contract.spec import (
    CHAIN_INPUTS,
    DEFAULT_MAX_BATCH,
    DEFAULT_RESOLUTION,
    ENSEMBLES,
    NETWORKS,
    ModelSpec,
    Resolution,
    TensorSpec,
    chain_steps,
    format_buckets,
    parse_resolution,
    profile_shapes,
    tensorrt_profiles,
)


class RepositoryOptionsError(CompositorError, ValueError):
    """Repository options that cannot work together or an ONNX file that does not fit them."""


@dataclass(frozen=True)
class RepositoryOptions:
    """What varies between generated repositories.

    Attributes:
        flavor: ``python``, ``onnxruntime`` or ``tensorrt`` (see the module docstring).
        resolution: the network resolution (``spec.Resolution``: aspect buckets or one fixed size;
            ``spec.parse_resolution`` takes ``512`` or ``"256x384"``); must match the export's.
        max_batch: ``max_batch_size`` of every model (the ensembles accept batches up to it too).
        instances: instances of each network model (``instance_group.count``).
        stage_instances: instances of ``preprocess`` and ``postprocess`` (None: ``instances``). They
            run on the CPU, one request at a time each: on a GPU server one instance of each caps
            throughput while the GPU idles, so give them about half the cores (``compositor
            repository`` does for the GPU flavours); the networks' dynamic batcher then sees
            several requests at once and forms batches.
        max_queue_delay_us: dynamic-batcher queue delay of the network models, microseconds.
        intra_op_threads: ONNX Runtime intra-op threads per instance (CPU flavours).
        trt_accelerator: ``onnxruntime`` only: run on GPU with ONNX Runtime's TensorRT execution
            accelerator, in FP32 (its own FP16 would keep nothing of our FP32 statistics), with the
            export's optimisation profile (every bucket, batch 1 to ``max_batch``) and its engines
            cached in ``trt_cache_dir`` (one folder per network).
        trt_cache_dir: where the accelerator keeps its engines (``DEFAULT_TRT_ACCELERATOR_CACHE``).
    """

    flavor: str = "python"
    resolution: Resolution = DEFAULT_RESOLUTION
    max_batch: int = DEFAULT_MAX_BATCH
    instances: int = 1
    stage_instances: int | None = None
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US
    intra_op_threads: int = DEFAULT_INTRA_OP_THREADS
    trt_accelerator: bool = False
    trt_cache_dir: str = DEFAULT_TRT_ACCELERATOR_CACHE

    def __post_init__(self) -> None:
        if self.flavor not in FLAVORS:
            raise RepositoryOptionsError(f"flavor must be one of {', '.join(FLAVORS)}, not {self.flavor!r}")
        object.__setattr__(self, "resolution", parse_resolution(self.resolution))
        if self.stage_instances is None:
            object.__setattr__(self, "stage_instances", self.instances)
        for name in ("max_batch", "instances", "stage_instances"):
            if getattr(self, name) < 1:
                raise RepositoryOptionsError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue_delay_us < 0:
            raise RepositoryOptionsError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        if self.intra_op_threads < 0:
            raise RepositoryOptionsError(f"intra_op_threads must be >= 0 (0: ONNX Runtime decides), got {self.intra_op_threads}")
        if self.trt_accelerator and self.flavor != "onnxruntime":
            raise RepositoryOptionsError(
                f"the TensorRT accelerator is an option of the onnxruntime flavour, not {self.flavor!r} "
                "(the tensorrt flavour runs TensorRT engines directly)"
            )

    @property
    def on_gpu(self) -> bool:
        """Whether the network models run on GPU instances."""
        return self.flavor == "tensorrt" or self.trt_accelerator


# --- Building blocks ----------------------------------------------------------------------------


def triton_dtype(dtype: str) -> str:
    """numpy dtype name -> config ``data_type`` (``"float32"`` -> ``"TYPE_FP32"``)."""
    return f"TYPE_{np_to_triton_dtype(np.dtype(dtype))}"


def tensor_config(tensor: TensorSpec, optional: bool = False) -> dict:
    """One ``input``/``output`` entry; dims exclude the batch dimension (``max_batch_size`` > 0).

    The network height and width are ``-1``: preprocessing picks one of the resolution's buckets
    per request, and every bucket goes through the same model.
    """
    entry = {
        "name": tensor.name,
        "data_type": triton_dtype(tensor.dtype),
        "dims": list(tensor.dynamic_shape()),
    }
    if optional:
        entry["optional"] = True
    return entry


def _signature(model: ModelSpec) -> dict:
    optional = OPTIONAL_INPUTS.get(model.name, frozenset())
    return {
        "input": [tensor_config(t, optional=t.name in optional) for t in model.inputs],
        "output": [tensor_config(t) for t in model.outputs],
    }


def _parameters(values: dict[str, str]) -> dict:
    return {key: {"string_value": value} for key, value in values.items()}


def _instances(options: RepositoryOptions, gpu: bool, stage: bool = False) -> list[dict]:
    count = options.stage_instances if stage else options.instances
    return [{"count": count, "kind": "KIND_GPU" if gpu else "KIND_CPU"}]


# --- The models ---------------------------------------------------------------------------------


NO_EXPORT_NOTE = (
    "repository generated without an export folder (compositor repository --configs-only, no --onnx): "
    "the model files copied in later are not recorded; generate it with --onnx DIR to record them"
)
"""Note of the ``unknown`` provenance a repository gets when it is generated without an export."""

def provenance_json(record: dict) -> str:
    """The ``PROVENANCE_PARAMETER`` value: the record's four fields, in order, as compact JSON.

    Raises:
        RepositoryOptionsError: a kind outside ``PROVENANCE_KINDS``.
    """
    checked = as_provenance_record(record)
    if checked is None:
        raise RepositoryOptionsError(
            f"weights provenance kind must be one of {', '.join(PROVENANCE_KINDS)}, not {record.get('kind')!r}"
        )
    return json.dumps(checked, separators=(", ", ": "))


def network_config(model: ModelSpec, options: RepositoryOptions, provenance: dict | None = None) -> dict:
    """Config of one network (``matting``, ``blending``, ``harmonization``) in the chosen flavour.

    Networks take tensors at one of the resolution's aspect buckets (dims ``[C, -1, -1]``), so
    frames of any original size arrive in a few shapes. Triton's dynamic batcher stacks only
    requests of equal shapes: it merges requests of the same bucket into one execution and runs
    different buckets as separate batches (one bucket per batch, never padded together).
    ``provenance`` (where the
    weights came from; unknown, with ``NO_EXPORT_NOTE``, if None) goes in as ``PROVENANCE_PARAMETER``.
    """
    config = {"name": model.name}
    if options.flavor == "python":
        config["backend"] = "python"
    elif options.flavor == "onnxruntime":
        config["platform"] = "onnxruntime_onnx"
    else:
        config["platform"] = "tensorrt_plan"
    config["max_batch_size"] = options.max_batch
    config.update(_signature(model))
    config["instance_group"] = _instances(options, gpu=options.on_gpu)
    config["dynamic_batching"] = {"max_queue_delay_microseconds": options.max_queue_delay_us}
    if options.trt_accelerator:
        config["optimization"] = {
            "execution_accelerators": {"gpu_execution_accelerator": [{"name": "tensorrt", "parameters": trt_accelerator_parameters(model, options)}]}
        }
    parameters = {}
    if options.flavor in ("python", "onnxruntime") and not options.trt_accelerator:
        parameters[INTRA_OP_THREADS_PARAMETER] = str(options.intra_op_threads)
    parameters[PROVENANCE_PARAMETER] = provenance_json(provenance if provenance is not None else unknown_provenance(NO_EXPORT_NOTE))
    config["parameters"] = _parameters(parameters)
    return config


def trt_accelerator_parameters(model: ModelSpec, options: RepositoryOptions) -> dict[str, str]:
    """Parameters of the TensorRT execution accelerator (keys of Triton's onnxruntime backend, which
    maps them onto ONNX Runtime's ``trt_*`` provider options).

    * The optimisation profile of the export (``tensorrt_profiles``): without one the provider
      builds an engine for each new input shape it meets, after the server has reported ready.
    * An engine cache on the cache volume: without one every start builds them again.
    * No ``precision_mode``: FP32. The provider's FP16 lets TensorRT choose a precision per layer
      and keeps nothing of the FP32 statistics our FP16 export holds on to (their sums overflow
      FP16); the ``tensorrt`` flavour runs our FP16 engines instead.
    """
    profiles = tensorrt_profiles(model, options.resolution, options.max_batch)
    cache = f"{options.trt_cache_dir.rstrip('/')}/{model.name}"
    return {
        "trt_profile_min_shapes": profile_shapes(profiles, "min"),
        "trt_profile_opt_shapes": profile_shapes(profiles, "opt"),
        "trt_profile_max_shapes": profile_shapes(profiles, "max"),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": cache,
    }


def preprocess_config(options: RepositoryOptions) -> dict:
    """Config of the ``preprocess`` Python model; records the network resolution as parameters:
    ``resolution`` (what it runs by, ``"512"`` or ``"256x384"``) and ``buckets`` (the sizes it
    resizes frames to, for people and clients).

    No dynamic batching: each request has its own frame size, so requests cannot be stacked
    before they are resized; Triton's default scheduler hands the model one request at a time.
    """
    config = {"name": PREPROCESS.name, "backend": "python", "max_batch_size": options.max_batch}
    config.update(_signature(PREPROCESS))
    config["instance_group"] = _instances(options, gpu=False, stage=True)
    config["parameters"] = _parameters(
        {RESOLUTION_PARAMETER: str(options.resolution), BUCKETS_PARAMETER: format_buckets(options.resolution)}
    )
    return config


def postprocess_config(options: RepositoryOptions) -> dict:
    """Config of the ``postprocess`` Python model (not batched across requests, as ``preprocess``)."""
    config = {"name": POSTPROCESS.name, "backend": "python", "max_batch_size": options.max_batch}
    config.update(_signature(POSTPROCESS))
    config["instance_group"] = _instances(options, gpu=False, stage=True)
    return config


def _step(model: str, input_map: dict[str, str], output_map: dict[str, str]) -> dict:
    # model_version -1: the latest version, the only one the generator writes.
    return {"model_name": model, "model_version": -1, "input_map": input_map, "output_map": output_map}


def _same_names(names) -> dict[str, str]:
    return {name: name for name in names}


def ensemble_tensor(chain_tensor: str) -> str:
    """The ensemble's name for a chain tensor at network resolution (``alpha`` -> ``network_alpha``):
    the name ``preprocess`` and ``postprocess`` use for it (``compositor.contract.stages``)."""
    return f"network_{chain_tensor}"


def ensemble_steps(with_alpha: bool) -> list[dict]:
    """The ensemble's steps. Ensemble tensors are named after the stage tensors they carry.

    ``composite``: preprocess -> the networks of ``spec.CHAIN`` -> postprocess.
    ``composite_with_alpha``: the client's ``alpha`` goes to preprocess (which then returns
    ``network_alpha``) and to postprocess (which uses it at full resolution); no matting.
    """
    client_inputs = ["source", "background"] + (["alpha"] if with_alpha else [])
    prepared = ["network_source", "network_background", "background_full"] + (["network_alpha"] if with_alpha else [])
    steps = [_step(PREPROCESS.name, _same_names(client_inputs), _same_names(prepared))]
    given = CHAIN_INPUTS + (("alpha",) if with_alpha else ())
    for step in chain_steps(given):
        input_map = {name: ensemble_tensor(chain_tensor) for name, chain_tensor in step.inputs}
        output_map = {name: ensemble_tensor(chain_tensor) for name, chain_tensor in step.writes().items()}
        steps.append(_step(step.network, input_map, output_map))
    post_inputs = [t.name for t in POSTPROCESS.inputs if with_alpha or t.name not in OPTIONAL_INPUTS[POSTPROCESS.name]]
    # With the client's matte, postprocess's ``alpha`` output would only echo it: not an output.
    post_outputs = ENSEMBLES["composite_with_alpha" if with_alpha else "composite"].output_names()
    steps.append(_step(POSTPROCESS.name, _same_names(post_inputs), _same_names(post_outputs)))
    return steps


def ensemble_config(ensemble: ModelSpec, options: RepositoryOptions) -> dict:
    """Config of an ensemble (``composite`` or ``composite_with_alpha``): uint8 NHWC frames of any size."""
    config = {"name": ensemble.name, "platform": "ensemble", "max_batch_size": options.max_batch}
    config.update(_signature(ensemble))
    config["ensemble_scheduling"] = {"step": ensemble_steps(with_alpha="alpha" in ensemble.input_names())}
    return config


def repository_configs(options: RepositoryOptions, provenance: dict[str, dict] | None = None) -> dict[str, dict]:
    """Every model's config, by model name, in pipeline order.

    Args:
        options: flavour, resolution, batching and instance settings.
        provenance: per network, where its weights came from (an export's records); a network
            missing here gets an unknown record (``NO_EXPORT_NOTE``).
    """
    provenance = provenance or {}
    configs = {PREPROCESS.name: preprocess_config(options)}
    configs.update({name: network_config(model, options, provenance.get(name)) for name, model in NETWORKS.items()})
    configs[POSTPROCESS.name] = postprocess_config(options)
    configs.update({name: ensemble_config(model, options) for name, model in ENSEMBLES.items()})
    return configs


# --- Validation and serialisation ---------------------------------------------------------------


class ConfigSchemaError(CompositorError, ValueError):
    """A config dict does not fit Triton's ``ModelConfig`` schema."""


def to_model_config(config: dict) -> model_config_pb2.ModelConfig:
    """Parse a config dict into Triton's ``ModelConfig`` message.

    Raises:
        ConfigSchemaError: unknown field, wrong type or enum value (the message names the model).
    """
    try:
        return json_format.ParseDict(config, model_config_pb2.ModelConfig())
    except json_format.ParseError as error:
        raise ConfigSchemaError(f"config of model {config.get('name', '?')!r}: {error}") from None


def to_pbtxt(config: dict) -> str:
    """A config dict as ``config.pbtxt`` text, after validation through ``model_config_pb2``."""
    return text_format.MessageToString(to_model_config(config))
