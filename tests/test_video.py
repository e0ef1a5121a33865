"""``compositor composite --url`` on a video, against a real Triton server.

The test makes its videos with PyAV (H.264, with an AAC sine tone), runs the command, decodes what it
wrote, and compares each frame with a single-image composite of the decoded input frame through the
same server; video compression is lossy, so the comparison is a PSNR bound, not equality.
"""

from __future__ import annotations

import re
from fractions import Fraction

import av
import numpy as np
import pytest
import skimage.data

from compositor import imaging
from compositor.cli import main
from compositor.client.remote import CompositorClient
from compositor.media.video import VideoInfo, VideoWriter, probe, read_frames

pytestmark = pytest.mark.triton

WIDTH, HEIGHT, FPS = 96, 64, 10
MIN_PSNR_DB = 27.0
"""H.264 at its default quality keeps about 30-32 dB of these small frames (they run at their own
3:2 aspect bucket, 64x96, so the untrained MODNet's noisy matte reaches the output at full detail,
which the codec keeps less well than the smoother squashed composites before buckets, 35-45 dB);
a wrong frame, a shifted order or another output scores far below 20."""


@pytest.fixture(scope="module")
def server(small_server):
    return small_server


def write_video(path, frames: list[np.ndarray], fps: int = FPS, audio: bool = True) -> None:
    """H.264 video of RGB ``frames``; with ``audio``, an AAC 440 Hz tone as long as the video."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv420p"
        sound = container.add_stream("aac", rate=16000, layout="mono") if audio else None
        for frame in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if sound is not None:
            samples = int(16000 * len(frames) / fps)
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / 16000)).astype(np.float32)
            for start in range(0, samples, 1024):
                chunk = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 16000, start
                for packet in sound.encode(chunk):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)


def decode(path) -> tuple[list[np.ndarray], dict]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = {"rate": Fraction(stream.average_rate), "width": stream.codec_context.width,
                "height": stream.codec_context.height, "audio_streams": len(container.streams.audio)}
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    with av.open(str(path)) as container:
        info["audio_packets"] = sum(1 for p in container.demux(audio=0) if p.size) if info["audio_streams"] else 0
    return frames, info


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def moving_portrait(count: int) -> list[np.ndarray]:
    """A crop of the astronaut photo sliding 3 pixels per frame: every frame differs."""
    photo = imaging.resize(skimage.data.astronaut(), (128, 160))
    return [np.ascontiguousarray(photo[20:20 + HEIGHT, 3 * i:3 * i + WIDTH]) for i in range(count)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    write_video(folder / "talk.mp4", moving_portrait(12))
    imaging.write_image(folder / "beach.png", imaging.resize(skimage.data.coffee(), (80, 120)))
    return folder


def test_a_video_keeps_its_frames_rate_size_and_audio_and_each_frame_is_the_single_image_composite(server, clip, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    code = main(["composite", "--url", server.grpc_url, "--source", str(clip / "talk.mp4"),
                 "--background", str(clip / "beach.png"), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert re.search(r"^12 frames in \d+\.\d s \(\d+\.\d\d frames/s\)$", captured.out, re.M), captured.out
    written, info = decode(out)
    assert len(written) == 12
    assert info["rate"] == FPS and (info["width"], info["height"]) == (WIDTH, HEIGHT)
    assert info["audio_streams"] == 1 and info["audio_packets"] > 0
    inputs, _ = decode(clip / "talk.mp4")
    background = imaging.read_image(clip / "beach.png")
    with CompositorClient(server.grpc_url, timeout_s=60) as client:
        expected = [client.composite(frame, background)["harmonized"] for frame in inputs]
    scores = [psnr(w, e) for w, e in zip(written, expected)]
    assert min(scores) > MIN_PSNR_DB, scores
    # And not by accident: a frame compared with its neighbour's composite scores lower.
    assert psnr(written[5], expected[0]) < min(scores) - 3


def test_a_background_video_goes_frame_by_frame_and_loops_when_shorter(server, clip, tmp_path, capsys):
    colours = [np.full((HEIGHT, WIDTH, 3), c, np.uint8) for c in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    write_video(tmp_path / "lights.mp4", colours, audio=False)
    write_video(tmp_path / "short.mp4", moving_portrait(7), audio=False)
    out = tmp_path / "out.mp4"
    code = main(["composite", "--url", server.grpc_url, "--source", str(tmp_path / "short.mp4"),
                 "--background", str(tmp_path / "lights.mp4"), "--out", str(out), "--video-output", "blended"])
    assert code == 0, capsys.readouterr().err
    written, info = decode(out)
    assert len(written) == 7 and info["audio_streams"] == 0
    inputs, _ = decode(tmp_path / "short.mp4")
    backgrounds, _ = decode(tmp_path / "lights.mp4")
    with CompositorClient(server.grpc_url, timeout_s=60) as client:
        for index, frame in enumerate(written):
            expected = client.composite(inputs[index], backgrounds[index % 3])["blended"]
            assert psnr(frame, expected) > MIN_PSNR_DB, index


def test_temporal_smoothing_re_requests_the_flickering_frame_with_its_neighbours_matte(server, tmp_path, capsys):
    # Frames A A A B A A: frame 3 jumps away from two identical neighbours, so wherever its matte
    # differs from A's by more than T, the rule gives it A's matte (the mean of two equal values).
    a, b = moving_portrait(1)[0], imaging.resize(skimage.data.chelsea(), (HEIGHT, WIDTH))
    write_video(tmp_path / "flicker.mp4", [a, a, a, b, a, a], audio=False)
    frames, _ = decode(tmp_path / "flicker.mp4")
    background = imaging.resize(skimage.data.coffee(), (HEIGHT, WIDTH))
    imaging.write_image(tmp_path / "beach.png", background)
    with CompositorClient(server.grpc_url, timeout_s=60) as client:
        mattes = [client.composite(frame, background)["alpha"] for frame in frames]
    threshold = 0.02
    jump = np.abs(mattes[3].astype(int) - mattes[2].astype(int))
    flicker = (jump > threshold * 255) & (np.abs(mattes[3].astype(int) - mattes[4].astype(int)) > threshold * 255) \
        & (np.abs(mattes[2].astype(int) - mattes[4].astype(int)) <= threshold * 255)
    assert flicker.mean() > 0.05, "the two photos must give visibly different mattes for this test to mean anything"

    outs = {}
    for smoothing in (False, True):
        outs[smoothing] = tmp_path / f"alpha_{smoothing}.mkv"
        extra = ["--temporal-smoothing", "--smoothing-threshold", str(threshold)] if smoothing else []
        code = main(["composite", "--url", server.grpc_url, "--source", str(tmp_path / "flicker.mp4"),
                     "--background", str(tmp_path / "beach.png"), "--out", str(outs[smoothing]),
                     "--video-output", "alpha", *extra])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        if smoothing:
            assert re.search(r"temporal smoothing changed \d+ matte pixels and re-requested 1 frames", captured.out), captured.out
    plain, _ = decode(outs[False])
    smoothed, _ = decode(outs[True])
    # Without smoothing frame 3 shows B's matte; with it, frame 3's matte is A's where it flickered.
    gray = [f[..., :1].astype(int) for f in plain], [f[..., :1].astype(int) for f in smoothed]
    before = np.abs(gray[0][3] - gray[0][2])[flicker].mean()
    after = np.abs(gray[1][3] - gray[1][2])[flicker].mean()
    assert before > 3 * threshold * 255 and after < before / 3, (before, after)
    # The other frames' mattes are their first answers (up to the codec: frame 4 is predicted from 3).
    for index in (0, 1, 2, 4, 5):
        assert psnr(smoothed[index], plain[index]) > MIN_PSNR_DB, index


def test_an_unusable_background_fails_before_any_work_and_writes_nothing(server, clip, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    imaging.write_image(tmp_path / "huge.png", np.zeros((imaging.MAX_IMAGE_SIDE + 1, 2, 3), np.uint8))
    code = main(["composite", "--url", server.grpc_url, "--source", str(clip / "talk.mp4"),
                 "--background", str(tmp_path / "huge.png"), "--out", str(out)])
    assert code == 2
    assert "huge.png: 2x8193 (width x height) exceeds the 8192-pixel side limit" in capsys.readouterr().err
    assert not out.exists()


def test_a_run_that_fails_half_way_leaves_no_partial_video_and_an_earlier_one_untouched(clip, tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"an earlier result")
    info = probe(clip / "talk.mp4")
    with pytest.raises(RuntimeError, match="frame 3 failed"):
        with VideoWriter(out, info, audio_from=clip / "talk.mp4") as writer:
            for frame in read_frames(clip / "talk.mp4"):
                if frame.index == 3:
                    raise RuntimeError("frame 3 failed")
                writer.write(frame.image, frame.pts)
    assert out.read_bytes() == b"an earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_an_odd_frame_size_is_padded_to_even_for_yuv420p(tmp_path):
    frames = [np.full((33, 47, 3), 40 * i, np.uint8) for i in range(3)]
    info = VideoInfo(width=47, height=33, frame_rate=Fraction(5), time_base=Fraction(1, 5), frames=3, has_audio=False)
    with VideoWriter(tmp_path / "odd.mp4", info) as writer:
        for frame in frames:
            writer.write(frame)
    written, meta = decode(tmp_path / "odd.mp4")
    assert (meta["width"], meta["height"]) == (48, 34) and meta["rate"] == 5
    assert [int(np.median(f[:33, :47])) for f in written] == pytest.approx([0, 40, 80], abs=3)
