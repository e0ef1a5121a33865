"""Export chain: FP32 ONNX, FP16 ONNX, parity, TensorRT readiness, report, atomic output.

One export of the default (seeded, untrained) networks at small aspect buckets (short side 64:
64x64, 64x96, 96x64) serves most tests (module fixture); the MODNet fixture test exports at the fixture's own size. The untrained
blending and harmonization nets have zero-initialised residual heads, which makes them exact
identities of their inputs; the parity tests that must see real network arithmetic give those
heads small random weights (``nontrivial_networks``).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from compositor.contract import spec
from compositor.export import exporter, fp16, parity, readiness
from compositor.export.onnx_export import ExportError, check_contract, export_fp32
from compositor.export.parity import ParityError
from compositor.export.trt_ops import check_operators, tensorrt_operators
from compositor.networks.contract import BlendingModel, MattingModel, contract_models
from compositor.networks.factory import load_networks
from compositor.networks.modnet_checkpoint import load_modnet_checkpoint

RESOLUTION = spec.aspect_buckets(64)
SQUARE, WIDE, TALL = (64, 64), (64, 96), (96, 64)
"""Its buckets, hand-computed: short side 64; 64 * 3/2 = 96; 64 * 4/3 = 85 and 64 * 16/9 = 113 floor to 64 and 96."""
MAX_BATCH = 4
FIXTURE_DIR = Path(__file__).parent / "data" / "modnet"


@pytest.fixture(scope="module")
def default_networks():
    return load_networks(trained_defaults=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, default_networks):
    out = tmp_path_factory.mktemp("export")
    result = exporter.export_all(out, default_networks, RESOLUTION, MAX_BATCH)
    return out, result.report


def _io_types(model: onnx.ModelProto) -> dict[str, int]:
    return {v.name: v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)}


# --- Files and contract ---------------------------------------------------------------------------


def test_export_writes_fp32_and_fp16_onnx_and_the_report_and_nothing_else(exported):
    out, report = exported

    names = sorted(p.name for p in out.iterdir())

    assert names == sorted(
        [f"{n}.onnx" for n in spec.NETWORKS] + [f"{n}.fp16.onnx" for n in spec.NETWORKS] + [f"{n}.check.npz" for n in spec.NETWORKS]
        + ["export_report.json"]
    )
    assert json.loads((out / "export_report.json").read_text()) == json.loads(json.dumps(report))


def test_each_network_ships_a_check_case_its_fp32_onnx_reproduces(exported):
    """The stored case an engine is checked on: photo inputs at the square bucket, at most max_batch
    of them, and the FP32 ONNX's outputs on them (recomputed here with ONNX Runtime directly)."""
    import onnxruntime

    out, report = exported
    for name, model_spec in spec.NETWORKS.items():
        assert report["networks"][name]["files"]["check"] == f"{name}.check.npz"
        with np.load(out / f"{name}.check.npz", allow_pickle=False) as stored:
            inputs = {k.split("/", 1)[1]: stored[k] for k in stored.files if k.startswith("input/")}
            outputs = {k.split("/", 1)[1]: stored[k] for k in stored.files if k.startswith("output/")}
        assert sorted(inputs) == sorted(model_spec.input_names()) and sorted(outputs) == sorted(model_spec.output_names())
        assert all(1 <= v.shape[0] <= MAX_BATCH and tuple(v.shape[2:]) == tuple(RESOLUTION.reference) for v in inputs.values())
        session = onnxruntime.InferenceSession(str(out / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        fresh = dict(zip(model_spec.output_names(), session.run(model_spec.output_names(), inputs)))
        for output, value in outputs.items():
            np.testing.assert_allclose(value, fresh[output], atol=1e-6)


def test_fp32_graphs_carry_the_spec_names_opset_17_and_a_dynamic_batch_height_and_width(exported):
    out, _ = exported

    for name, model_spec in spec.NETWORKS.items():
        model = onnx.load(str(out / f"{name}.onnx"))
        check_contract(model, model_spec)  # raises on any mismatch
        inputs = [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in model.graph.input]
        channels = {"image": 3, "source": 3, "alpha": 1, "background": 3, "composite": 3, "mask": 1}
        assert inputs == [(t.name, ["batch", channels[t.name], "height", "width"]) for t in model_spec.inputs]
        assert max(o.version for o in model.opset_import if o.domain == "") >= 17


def test_contract_check_rejects_a_fixed_height_and_dynamic_channels(exported):
    out, _ = exported
    fixed = onnx.load(str(out / "blending.onnx"))
    fixed.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 64
    dynamic_channels = onnx.load(str(out / "blending.onnx"))
    dynamic_channels.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "channels"

    with pytest.raises(ExportError, match=r"source has shape \['batch', 3, 64, 'width'\], spec says \['batch', 3, 'height', 'width'\]"):
        check_contract(fixed, spec.BLENDING)
    with pytest.raises(ExportError, match=r"source has shape \['batch', 'channels', 'height', 'width'\]"):
        check_contract(dynamic_channels, spec.BLENDING)


# --- FP32 parity ----------------------------------------------------------------------------------


def test_fp32_onnx_matches_eager_within_1e_4_on_photos_and_random_inputs(exported):
    _, report = exported

    for name, entry in report["networks"].items():
        parity_report = entry["fp32_parity"]
        assert parity_report["passed"] and parity_report["tolerances"] == {"max_abs_error": 1e-4}
        assert set(parity_report["cases"]) == {"photos", "random", "photos_wide", "random_wide"}
        for case in parity_report["cases"].values():
            for output in case.values():
                assert output["finite"] and output["max_abs_error"] < 1e-4, name


def test_fp32_onnx_batch_is_dynamic_from_1_to_beyond_the_traced_batch(exported, default_networks):
    out, _ = exported
    models = contract_models(default_networks)
    session = parity.onnxruntime_session(out / "matting.onnx")

    for batch in (1, 5):
        feeds = parity.random_feeds(SQUARE, batch=batch)["matting"]
        expected = parity.run_eager(models["matting"], "matting", feeds)["alpha"]
        actual = parity.run_onnx(session, feeds)["alpha"]
        assert actual.shape == (batch, 1, *SQUARE)
        assert np.abs(actual - expected).max() < 1e-4


@pytest.mark.slow
def test_nontrivial_blending_and_harmonization_match_eager_in_fp32_and_fp16(tmp_path, nontrivial_networks):
    models = contract_models(nontrivial_networks)
    feeds = parity.parity_feeds(models, RESOLUTION)

    for name in ("blending", "harmonization"):
        fp32_path, fp16_path = tmp_path / f"{name}.onnx", tmp_path / f"{name}.fp16.onnx"
        export_fp32(models[name], name, fp32_path, RESOLUTION)
        fp32_report = parity.check_fp32_parity(name, models[name], fp32_path, feeds)
        fp16.save_mixed_precision(fp32_path, fp16_path, fp16.precision_ladder(models[name])[0])
        fp16_report = parity.check_fp16_parity(name, fp32_path, fp16_path, feeds)

        output = spec.NETWORKS[name].outputs[0].name
        photos = parity.run_eager(models[name], name, feeds["photos"][name])[output]
        linear = feeds["photos"][name][spec.NETWORKS[name].inputs[0].name]
        assert np.abs(photos - linear).max() > 0.01, "the residual head must change the output"
        assert fp32_report.cases["photos"][output].max_abs_error < 1e-4
        fp16_photos = fp16_report.cases["photos"][output]
        print(f"{name} FP16 vs FP32 on photos: max abs {fp16_photos.max_abs_error:.2e}, PSNR {fp16_photos.psnr_db:.1f} dB")
        assert fp16_photos.psnr_db >= 40.0 and fp16_photos.finite


def test_the_edge_band_of_the_matte_correction_follows_the_short_side_at_every_bucket():
    from compositor.networks.blending import edge_region

    # One opaque pixel: its band is the (2r+1)^2 square around it, r = short side / 32 = 2, so 5x5,
    # in the square, the wide and the tall bucket alike (from the width, 64x96 would give r = 3).
    for height, width in (SQUARE, WIDE, TALL):
        alpha = torch.zeros(1, 1, height, width)
        alpha[..., 30, 30] = 1.0
        band = edge_region(alpha)
        assert band.sum().item() == 25, (height, width)
        assert band[0, 0, 28:33, 28:33].min().item() == 1.0


def test_an_exported_blending_net_with_matte_correction_matches_eager_at_every_bucket(tmp_path):
    # The ONNX graph is traced at the square bucket; the matte correction's edge band radius is a
    # constant in it. Eager recomputes it per input, so any bucket where the two differ fails here.
    from compositor.networks.blending import BlendingUNet
    from compositor.networks.defaults import weights_dir
    from compositor.networks.weights import load_network

    blending = load_network(weights_dir() / "blending_matte_correction.safetensors", expected=BlendingUNet)
    assert blending.alpha_head is not None and blending.alpha_head.weight.abs().max() > 0, "trained weights refine the matte"
    model = BlendingModel(blending).eval()
    path = export_fp32(model, "blending", tmp_path / "blending.onnx", RESOLUTION)
    session = parity.onnxruntime_session(path)

    for size in (SQUARE, WIDE, TALL):
        feeds = parity.random_feeds(size, batch=2)["blending"]
        # A subject with one clear edge, so the band is a strip around it (a noisy matte is edge
        # everywhere, whatever the radius).
        feeds["alpha"] = np.zeros_like(feeds["alpha"])
        feeds["alpha"][..., 16:-16, 16:-16] = 1.0
        expected, actual = parity.run_eager(model, "blending", feeds), parity.run_onnx(session, feeds)
        assert actual["blended"].shape == (2, 3, *size)
        for output in ("blended", "refined_alpha"):
            assert np.abs(actual[output] - expected[output]).max() < 1e-4, (size, output)
        assert np.abs(expected["refined_alpha"] - feeds["alpha"]).max() > 0.01, "the correction must act"


@pytest.mark.slow
def test_the_shipped_trained_weights_export_with_fp32_parity_and_pass_fp16_on_the_first_rung(tmp_path):
    # The first real FP16 check of these two nets: their trained residual heads (and the
    # harmonizer's gated tone transform) are not zero.
    networks = load_networks()
    assert networks.untrained == ["matting"], "weights/blending.safetensors and weights/harmonization.safetensors must load"
    models = contract_models(networks)
    feeds = parity.parity_feeds(models, RESOLUTION)
    for name in ("blending", "harmonization"):
        fp32_path, fp16_path = tmp_path / f"{name}.onnx", tmp_path / f"{name}.fp16.onnx"
        export_fp32(models[name], name, fp32_path, RESOLUTION)
        fp32_report = parity.check_fp32_parity(name, models[name], fp32_path, feeds).raise_on_failure()
        first_rung = fp16.precision_ladder(models[name])[0]
        fp16.save_mixed_precision(fp32_path, fp16_path, first_rung)
        fp16_report = parity.check_fp16_parity(name, fp32_path, fp16_path, feeds).raise_on_failure()
        output = spec.NETWORKS[name].outputs[0].name
        for case in ("photos", "random", "photos_wide", "random_wide"):
            assert fp32_report.cases[case][output].max_abs_error < 1e-4, (name, case)
            assert fp16_report.cases[case][output].finite and fp16_report.cases[case][output].psnr_db >= 40.0, (name, case)
    assert "tone" in fp16.precision_ladder(models["harmonization"])[0].fp32_scopes


@pytest.mark.slow
def test_matting_exported_from_the_modnet_fixture_reproduces_its_matte(tmp_path):
    io_pair = torch.load(FIXTURE_DIR / "modnet_official_format_random_io.pt", map_location="cpu", weights_only=True)
    resolution = tuple(io_pair["input"].shape[-2:])
    assert resolution == (256, 384)
    model = MattingModel(load_modnet_checkpoint(FIXTURE_DIR / "modnet_official_format_random.ckpt")).eval()

    path = export_fp32(model, "matting", tmp_path / "matting.onnx", spec.parse_resolution("256x384"))
    image = ((io_pair["input"] + 1) / 2).numpy()
    alpha = parity.run_onnx(parity.onnxruntime_session(path), {"image": image})["alpha"]

    error = float(np.abs(alpha - io_pair["matte"].numpy()).max())
    print(f"MODNet fixture matte through the exported ONNX (256x384): max abs error {error:.3e}")
    assert alpha.shape == tuple(io_pair["matte"].shape)
    assert error < 1e-4


# --- FP16 -----------------------------------------------------------------------------------------


def test_fp16_onnx_has_fp32_io_and_keeps_normalisation_statistics_in_fp32(exported):
    out, report = exported
    matting = onnx.shape_inference.infer_shapes(onnx.load(str(out / "matting.fp16.onnx")))
    harmonization = onnx.shape_inference.infer_shapes(onnx.load(str(out / "harmonization.fp16.onnx")))

    for model in (matting, harmonization):
        assert set(_io_types(model).values()) == {TensorProto.FLOAT}
    types = {
        name: {v.name: v.type.tensor_type.elem_type for v in m.graph.value_info}
        for name, m in (("matting", matting), ("harmonization", harmonization))
    }
    instance_norms = [n for n in matting.graph.node if n.op_type == "InstanceNormalization"]
    adain_sums = [n for n in harmonization.graph.node if n.op_type in ("ReduceSum", "ReduceMean")]
    convs = [n for n in harmonization.graph.node if n.op_type == "Conv"]

    # 20 sums of the masked statistics, each over rows then columns (colour.py: _sum_over_image).
    assert len(instance_norms) == 16 and len(adain_sums) == 40
    assert all(types["matting"][n.output[0]] == TensorProto.FLOAT for n in instance_norms)
    assert all("/adain" in n.name and types["harmonization"][n.output[0]] == TensorProto.FLOAT for n in adain_sums)
    assert all(types["harmonization"][n.output[0]] == TensorProto.FLOAT16 for n in convs)
    assert report["networks"]["harmonization"]["fp16"]["conversion"]["fp32_op_types"]["ReduceSum"] == 40


def test_fp16_meets_the_alpha_and_psnr_tolerances_on_photos_and_is_finite_everywhere(exported):
    _, report = exported

    for name, entry in report["networks"].items():
        fp16_parity = entry["fp16"]["parity"]
        assert fp16_parity["passed"] and fp16_parity["reference"] == "ONNX Runtime CPU, FP32 ONNX"
        assert fp16_parity["tolerances"]["toleranced_cases"] == ["photos", "photos_wide"]
        for case in ("photos", "photos_wide"):
            for output, result in fp16_parity["cases"][case].items():
                if output == "alpha":
                    assert result["max_abs_error"] <= 0.02
                else:
                    assert result["psnr_db"] is None or result["psnr_db"] >= 40.0
        assert all(o["finite"] for case in fp16_parity["cases"].values() for o in case.values())
        assert entry["fp16"]["headroom"]["passed"]


def test_fp16_conversion_gives_both_sides_of_a_comparison_one_precision():
    # Greater(FP16 activation, FP32 constant) would be a type error; the constant is converted.
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["scaled"], name="/mul"),
        helper.make_node("Greater", ["scaled", "threshold"], ["above"], name="/greater"),
        helper.make_node("Cast", ["above"], ["y"], name="/cast", to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(np.full(4, 2.0, np.float32), "scale"), numpy_helper.from_array(np.array(0.5, np.float32), "threshold")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    converted, _ = fp16.convert_to_mixed_precision(model, fp16.precision_ladder(torch.nn.Identity())[0])
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], [0.0, 0.0, 1.0, 1.0])


def test_fp16_conversion_keeps_the_weights_of_fp32_nodes_exact(exported):
    out, _ = exported
    fp32_model = onnx.load(str(out / "matting.onnx"))
    weights = {init.name: onnx.numpy_helper.to_array(init) for init in fp32_model.graph.initializer}
    keep_everything = fp16.PrecisionPolicy(name="all", fp32_op_types=frozenset(n.op_type for n in fp32_model.graph.node))

    converted, summary = fp16.convert_to_mixed_precision(fp32_model, keep_everything)

    assert summary.fp16_nodes == 0 and summary.casts_inserted == 0
    assert {init.data_type for init in converted.graph.initializer} == {TensorProto.FLOAT, TensorProto.INT64}
    for init in converted.graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(init), weights[init.name])


def test_precision_ladder_keeps_statistics_first_and_adds_modnets_encoder_second(default_networks):
    models = contract_models(default_networks)

    matting = fp16.precision_ladder(models["matting"])
    harmonization = fp16.precision_ladder(models["harmonization"])

    assert [p.name for p in matting] == ["statistics", "statistics+encoder"]
    assert "InstanceNormalization" in matting[0].fp32_op_types and matting[1].fp32_scopes == ("backbone",)
    assert [p.name for p in harmonization] == ["statistics"] and harmonization[0].fp32_scopes == ("adain",)
    assert [p.name for p in fp16.precision_ladder(models["blending"])] == ["statistics"]


def test_report_records_every_fp16_policy_tried_and_why(exported):
    _, report = exported

    matting = report["networks"]["matting"]["fp16"]
    assert matting["policy"] == matting["attempts"][-1]["policy"]["name"]
    for attempt in matting["attempts"][:-1]:
        assert attempt["failure"]
    assert "MaskedAdaIN" in report["networks"]["harmonization"]["fp16"]["attempts"][0]["policy"]["reasons"]["adain"]


# --- Overflow: why the statistics stay FP32 -------------------------------------------------------


class _AdaINStage(torch.nn.Module):
    """A decoder stage in miniature: conv -> MaskedAdaIN -> conv (the adain scope as in the U-Net)."""

    def __init__(self):
        super().__init__()
        from compositor.networks.harmonization import MaskedAdaIN

        self.conv_in = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.adain = MaskedAdaIN()
        self.conv_out = torch.nn.Conv2d(16, 3, 1)

    def forward(self, features, mask, background_features):
        return self.conv_out(self.adain(self.conv_in(features), mask, background_features))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's notice about its TorchScript exporter
def test_naive_fp16_statistics_overflow_where_the_kept_fp32_statistics_stay_finite(tmp_path):
    """Activations around 300 (square 9e4 > FP16's 65504), evaluated with true FP16 arithmetic.

    ONNX Runtime's CPU provider would hide the overflow (it runs FP16 Mul/Pow/ReduceSum in FP32),
    so the FP16 graphs run on ONNX's reference evaluator, which computes in numpy's float16.
    """
    from onnx.reference import ReferenceEvaluator

    torch.manual_seed(0)
    stage = _AdaINStage().eval()
    with torch.no_grad():
        stage.conv_in.weight.copy_(torch.eye(16)[:, :, None, None] * torch.tensor([[[[0.0, 0, 0], [0, 1, 0], [0, 0, 0]]]]))
        stage.conv_in.bias.zero_()
    names = ["features", "mask", "background_features"]
    shape = (1, 16, 64, 64)
    path = tmp_path / "stage.onnx"
    torch.onnx.export(
        stage, (torch.rand(shape), torch.ones(1, 1, 64, 64), torch.rand(shape)), str(path),
        input_names=names, output_names=["out"], opset_version=spec.ONNX_OPSET, dynamo=False,
    )  # fmt: skip
    fp32_model = onnx.load(str(path))
    rng = np.random.default_rng(0)
    feeds = {
        "features": (300 + 300 * rng.standard_normal(shape)).astype(np.float32),
        "mask": (rng.random((1, 1, 64, 64)) > 0.3).astype(np.float32),
        "background_features": (300 * rng.standard_normal(shape)).astype(np.float32),
    }
    kept, _ = fp16.convert_to_mixed_precision(fp32_model, fp16.precision_ladder(stage)[0])
    naive, _ = fp16.convert_to_mixed_precision(fp32_model, fp16.NAIVE_POLICY)

    reference = ReferenceEvaluator(fp32_model).run(None, feeds)[0]
    with np.errstate(over="ignore", invalid="ignore"):
        naive_out = ReferenceEvaluator(naive).run(None, feeds)[0]
    kept_out = ReferenceEvaluator(kept).run(None, feeds)[0]

    assert not np.all(np.isfinite(naive_out)), "naive FP16 should overflow in the statistics"
    assert np.all(np.isfinite(kept_out))
    relative = np.abs(kept_out - reference).max() / np.abs(reference).max()
    print(f"kept-FP32 statistics: max error {relative:.2e} of the output range; naive FP16: non-finite")
    assert relative < 1e-2
    with pytest.raises(fp16.PrecisionError, match=r"beyond FP16.*/adain/"):
        from compositor.export.headroom import check_fp16_headroom

        check_fp16_headroom(fp32_model, fp16.NAIVE_POLICY, [feeds])


@pytest.mark.slow
def test_headroom_check_rejects_naive_fp16_for_a_full_frame_portrait_mask(tmp_path, default_networks):
    """At 256x384 a full-frame mask sums to 98304, beyond FP16: the AdaIN mask area itself overflows."""
    from compositor.export.headroom import check_fp16_headroom

    resolution = (256, 384)
    model = contract_models(default_networks)["harmonization"]
    path = export_fp32(model, "harmonization", tmp_path / "harmonization.onnx", resolution)
    feeds = parity.random_feeds(resolution, batch=1)["harmonization"]
    feeds["mask"] = np.ones_like(feeds["mask"])
    fp32_model = onnx.load(str(path))

    with pytest.raises(fp16.PrecisionError, match=r"naive.*/adain.*ReduceSum"):
        check_fp16_headroom(fp32_model, fp16.NAIVE_POLICY, [feeds])
    report = check_fp16_headroom(fp32_model, fp16.precision_ladder(model)[0], [feeds])
    assert report.passed and report.largest < 100


# --- TensorRT readiness ---------------------------------------------------------------------------


def test_tensorrt_operator_list_names_its_source_and_version():
    text = (Path(fp16.__file__).parent / "data" / "tensorrt_onnx_ops.txt").read_text()
    operators = tensorrt_operators()

    assert "github.com/onnx/onnx-tensorrt" in text and "docs/operators.md" in text
    assert operators.version.startswith("TensorRT-10")
    assert {"Conv", "InstanceNormalization", "Resize", "ReduceSum", "Cast"} <= set(operators.types)
    assert "Unique" not in operators and "FP16" in operators.types["Conv"]


def test_every_exported_operator_is_on_tensorrts_list_and_only_batch_height_and_width_are_dynamic(exported):
    out, report = exported

    for name in spec.NETWORKS:
        for variant in ("onnx", "fp16.onnx"):
            model = onnx.load(str(out / f"{name}.{variant}"))
            summary = readiness.check_tensorrt_readiness(model, name)
            assert summary["passed"] and summary["unsupported"] == []
            assert summary["dynamic_dimensions"] == ["batch", "height", "width"]
        assert report["networks"][name]["tensorrt_readiness"]["fp16"]["passed"]


def test_readiness_rejects_an_operator_missing_from_tensorrts_list(exported):
    out, _ = exported
    model = onnx.load(str(out / "blending.onnx"))
    last = model.graph.node[-1]
    model.graph.node.append(helper.make_node("Unique", [last.output[0]], ["unique_out"], name="/unique"))

    assert check_operators(model).unsupported == ["Unique"]
    with pytest.raises(readiness.ReadinessError, match="operator Unique is not on TensorRT's list"):
        readiness.check_tensorrt_readiness(model, "blending")


def test_comparisons_are_checked_on_the_type_they_compare_not_their_bool_output():
    def model_with(op_type, input_type):
        graph = helper.make_graph(
            [helper.make_node(op_type, ["a", "b"], ["c"], name="/compare")], "g",
            [helper.make_tensor_value_info("a", input_type, [2]), helper.make_tensor_value_info("b", input_type, [2])],
            [helper.make_tensor_value_info("c", TensorProto.BOOL, [2])],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    assert check_operators(model_with("Greater", TensorProto.FLOAT)).unsupported_types == []
    assert check_operators(model_with("Equal", TensorProto.BOOL)).unsupported_types == ["Equal(BOOL)"]


def test_profile_matches_the_triton_config_the_repository_generates(exported):
    # The export checks the profile against dims it takes from the spec (it does not import the
    # serving package); the config that 'compositor repository --flavor tensorrt' generates must agree.
    from compositor.serving.configs import RepositoryOptions, network_config

    _, report = exported

    for name in spec.NETWORKS:
        config = network_config(spec.NETWORKS[name], RepositoryOptions(flavor="tensorrt", resolution=RESOLUTION, max_batch=MAX_BATCH))
        dims = {entry["name"]: list(entry["dims"]) for entry in config["input"]}
        profiles = spec.tensorrt_profiles(spec.NETWORKS[name], RESOLUTION, MAX_BATCH)
        readiness.check_profile_against_triton(profiles, dims, int(config["max_batch_size"]), RESOLUTION)
        assert dims == readiness.spec_triton_dims(name)
        check = report["networks"][name]["tensorrt_readiness"]["triton_profile_check"]
        assert check == {
            "passed": True,
            "triton_dims": dims,
            "triton_max_batch_size": int(config["max_batch_size"]),
            "buckets_covered": [list(SQUARE), list(WIDE), list(TALL)],
        }


@pytest.mark.slow
def test_the_export_package_does_not_import_the_serving_package():
    code = "import sys, compositor.export.exporter; print(sorted(m for m in sys.modules if m.startswith('compositor.serving')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)

    assert result.stdout.strip() == "[]"


def test_profile_check_rejects_other_channels_batch_input_names_or_a_bucket_outside_the_profile():
    profiles = spec.tensorrt_profiles(spec.HARMONIZATION, RESOLUTION, MAX_BATCH)
    dims = readiness.spec_triton_dims("harmonization")

    readiness.check_profile_against_triton(profiles, dims, MAX_BATCH, RESOLUTION)  # agrees: no error
    with pytest.raises(readiness.ReadinessError, match=r"composite: profile min \[1, 3, 64, 64\] != Triton dims \[4, -1, -1\]"):
        readiness.check_profile_against_triton(profiles, {**dims, "composite": [4, -1, -1]}, MAX_BATCH, RESOLUTION)
    with pytest.raises(readiness.ReadinessError, match=r"mask: profile batch 1..4 != 1..max_batch_size = 1..8"):
        readiness.check_profile_against_triton(profiles, dims, 8, RESOLUTION)
    with pytest.raises(readiness.ReadinessError, match="profile inputs .* != Triton inputs"):
        readiness.check_profile_against_triton(profiles, {**dims, "image": [3, -1, -1]}, MAX_BATCH, RESOLUTION)
    # Short side 128 has buckets up to 128x224 (128 * 16/9 = 227, floored): beyond a short-side-64 profile.
    with pytest.raises(readiness.ReadinessError, match=r"mask: bucket 128x128 is outside the profile's 64x64 .. 96x96"):
        readiness.check_profile_against_triton(profiles, dims, MAX_BATCH, spec.aspect_buckets(128))


# --- Report and failure behaviour -----------------------------------------------------------------


def test_report_carries_shapes_profiles_and_the_commands_to_build_and_check_engines(exported):
    _, report = exported

    assert report["max_batch"] == MAX_BATCH and report["opset"] >= 17
    assert (report["network_resolution"], report["buckets"]) == ("64", [list(SQUARE), list(WIDE), list(TALL)])
    assert "nearest the source frame's aspect ratio" in report["bucket_choice"]
    assert report["resolution"] == list(SQUARE), "the reference bucket, in the field older readers know"
    assert report["weights"]["untrained"] == ["matting", "blending", "harmonization"]
    matting = report["networks"]["matting"]
    assert matting["inputs"] == [{"name": "image", "dtype": "float32", "shape": [-1, 3, -1, -1]}]
    # min: the smallest height and width; opt: the square bucket; max: the tallest and widest (a box).
    assert matting["tensorrt"]["profile"]["image"] == {"min": [1, 3, 64, 64], "opt": [4, 3, 64, 64], "max": [4, 3, 96, 96]}
    assert "--minShapes=image:1x3x64x64 --optShapes=image:4x3x64x64 --maxShapes=image:4x3x96x96" in matting["tensorrt"]["trtexec"]
    assert matting["tensorrt"]["trtexec"].startswith("trtexec --onnx=matting.fp16.onnx --saveEngine=matting.plan --stronglyTyped")
    assert matting["tensorrt"]["polygraphy"].startswith("polygraphy run matting.fp16.onnx --trt --onnxrt --strongly-typed")
    assert matting["tensorrt"]["engine"] is None
    assert report["seconds"]["total"] > 0


@pytest.mark.slow
def test_a_failing_check_leaves_no_model_file_and_no_report(tmp_path, default_networks, monkeypatch):
    # Outputs of an earlier export that this one would contradict go first.
    (tmp_path / "export_report.json").write_text("{}")
    (tmp_path / "matting.plan").write_bytes(b"old engine")
    monkeypatch.setattr(parity, "FP32_MAX_ABS_ERROR", 0.0)

    with pytest.raises(ParityError, match=r"matting: ONNX Runtime CPU, FP32 ONNX vs eager PyTorch FP32: photos/alpha: max abs error .* > 0"):
        exporter.export_all(tmp_path, default_networks, RESOLUTION, MAX_BATCH)

    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_polygraphy_errors_in_the_report_are_the_plain_differences_of_the_two_runtimes(exported, default_networks):
    out, report = exported
    feeds = parity.parity_feeds(contract_models(default_networks), RESOLUTION)

    for case in ("photos", "random"):
        expected = parity.run_onnx(parity.onnxruntime_session(out / "harmonization.onnx"), feeds[case]["harmonization"])
        actual = parity.run_onnx(parity.onnxruntime_session(out / "harmonization.fp16.onnx"), feeds[case]["harmonization"])
        difference = np.abs(expected["harmonized"].astype(np.float64) - actual["harmonized"])
        reported = report["networks"]["harmonization"]["fp16"]["parity"]["cases"][case]["harmonized"]
        assert reported["max_abs_error"] == pytest.approx(difference.max(), rel=1e-6)
        assert reported["mean_abs_error"] == pytest.approx(difference.mean(), rel=1e-4)
        assert reported["psnr_db"] == pytest.approx(-10 * math.log10(np.mean(difference**2)), rel=1e-9)


def test_fp16_tolerances_hold_on_the_toleranced_case_only_and_every_miss_is_named(exported, default_networks):
    out, _ = exported
    feeds = parity.parity_feeds(contract_models(default_networks), RESOLUTION)
    fp32, fp16_path = out / "matting.onnx", out / "matting.fp16.onnx"

    with pytest.raises(ParityError) as error:
        parity.check_fp16_parity("matting", fp32, fp16_path, feeds, tolerances={"alpha": {"max_abs_error": 1e-9}})
    assert "photos/alpha: max abs error" in str(error.value) and "> 1e-09" in str(error.value)
    assert "random/" not in str(error.value)  # measured and reported, not held to the tolerance

    with pytest.raises(ParityError, match=r"random/alpha: mean abs error .* > 1e-10; random/alpha: PSNR .* dB < 200 dB"):
        parity.check_fp16_parity("matting", fp32, fp16_path, feeds, tolerances={"alpha": {"psnr_db": 200.0}}, toleranced_cases=("random",))


def test_psnr_is_infinite_for_identical_images_and_nan_for_non_finite_ones():
    image = np.full((1, 3, 4, 4), 0.5, np.float32)

    assert parity.psnr_db(image, image) == math.inf
    assert parity.psnr_db(image, image + 0.01) == pytest.approx(40.0)
    assert math.isnan(parity.psnr_db(image, image * np.inf))
    assert parity.compare(image, image).as_dict()["psnr_db"] is None
