"""Colour statistics over a whole bucket agree between ONNX Runtime and an exact (float64) sum."""

import numpy as np
import torch

from compositor.export.parity import onnxruntime_session, run_onnx
import skimage.data

from compositor import imaging
from compositor.networks.colour import masked_statistics, rgb_to_lab


class _Statistics(torch.nn.Module):
    def forward(self, values: torch.Tensor, weights: torch.Tensor):
        return (*masked_statistics(values, weights), *masked_statistics(values))


def test_statistics_of_the_widest_bucket_on_onnx_runtime_match_a_float64_sum(tmp_path):
    # A photo's Lab values (L up to 100) over 512x896, as the harmonizer takes its statistics.
    photo = torch.from_numpy(imaging.resize(skimage.data.astronaut(), (512, 896)).astype(np.float32) / 255.0)
    values = rgb_to_lab(photo.permute(2, 0, 1)[None])
    weights = torch.zeros(1, 1, 512, 896)
    weights[..., 100:480, 200:700] = 1.0
    path = tmp_path / "statistics.onnx"
    torch.onnx.export(_Statistics(), (values, weights), str(path), dynamo=False, input_names=["values", "weights"],
                      output_names=["mean", "std", "mean_all", "std_all"])
    outputs = run_onnx(onnxruntime_session(path), {"values": values.numpy(), "weights": weights.numpy()})

    v, w = values.double().numpy(), weights.double().numpy()
    mean = (v * w).sum(axis=(2, 3)) / w.sum(axis=(2, 3))
    std = np.sqrt(((v - mean[..., None, None]) ** 2 * w).sum(axis=(2, 3)) / w.sum(axis=(2, 3)))
    assert np.abs(outputs["mean"][..., 0, 0] - mean).max() < 1e-4
    assert np.abs(outputs["std"][..., 0, 0] - std).max() < 1e-4
    assert np.abs(outputs["mean_all"][..., 0, 0] - v.mean(axis=(2, 3))).max() < 1e-4
    assert np.abs(outputs["std_all"][..., 0, 0] - v.std(axis=(2, 3))).max() < 1e-4
