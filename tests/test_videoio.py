"""videoio: ffmpeg's header parsed without ffprobe, frames read and written, JPEG streams split.

Real ffmpeg on real and generated files; the header texts are ffmpeg's own output.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import CLIPS, CLIP_FRAMES, textured_frames
from tsn_pipeline.videoio import (JpegReader, VideoError, jpeg_end, jpeg_header, output_size,
                                  parse_header, probe, read_video, write_video)


def test_lossless_video_reads_back_exactly(tmp_path):
    frames = textured_frames(6, 24, 32, seed=4)
    write_video(tmp_path / "v.mkv", frames, fps=12.5, codec="ffv1")
    np.testing.assert_array_equal(read_video(tmp_path / "v.mkv"), frames)
    info = probe(tmp_path / "v.mkv")
    assert (info.width, info.height, info.fps, info.codec) == (32, 24, 12.5, "ffv1")


@pytest.mark.parametrize("name", sorted(CLIP_FRAMES))
def test_real_clips_probe_and_decode_what_they_hold(name):
    """The header's size is what decodes; the frame count is what decodes (HMDB51's headers
    claim one more), read at 64x48."""
    path = CLIPS / name
    info = probe(path)
    frames = read_video(path, size=(64, 48))
    assert frames.shape == (CLIP_FRAMES[name], 48, 64, 3)
    first = cv2.VideoCapture(str(path)).read()[1]
    assert (info.width, info.height) == (first.shape[1], first.shape[0])


def test_parse_header_sizes_fps_rotation_and_errors():
    text = ("Input #0, avi, from 'x.avi':\n  Duration: 00:00:02.50, start: 0.000000\n"
            "  Stream #0:0: Video: mpeg4 (Simple Profile), yuv420p, 8x6 [SAR 1:1 DAR 4:3], "
            "30 fps, 30 tbr, 30 tbn\n")
    info = parse_header("x.avi", text)
    assert (info.width, info.height, info.fps, info.codec, info.header_frames) == (
        8, 6, 30.0, "mpeg4", 75)
    rotated = text.replace("8x6", "640x360") + "      displaymatrix: rotation of -90.00 degrees\n"
    info = parse_header("x.avi", rotated)
    assert (info.width, info.height, info.rotation) == (360, 640, 270)
    with pytest.raises(VideoError, match="x.txt: not a readable video"):
        parse_header("x.txt", "x.txt: Invalid data found when processing input\n")


def test_output_size_rules():
    assert output_size(320, 240) == (320, 240)
    assert output_size(320, 240, size=(340, 256)) == (340, 256)
    assert output_size(320, 240, short_side=256) == (341, 256)
    assert output_size(240, 320, short_side=256) == (256, 341)
    with pytest.raises(ValueError, match="not both"):
        output_size(320, 240, size=(1, 1), short_side=2)


def test_jpeg_stream_is_split_into_the_files_ffmpeg_would_write(tmp_path):
    """JpegReader's frames are whole JPEGs (jpeg_end), their headers give the output size
    (jpeg_header), and they decode to the frames at the quality asked for."""
    frames = textured_frames(5, 48, 64, seed=2)
    write_video(tmp_path / "v.mkv", frames, codec="ffv1")
    reader = JpegReader(tmp_path / "v.mkv", size=(32, 24), qscale=2)
    jpegs = list(reader)
    assert len(jpegs) == 5 and (reader.width, reader.height) == (32, 24)
    for data in jpegs:
        assert jpeg_end(data) == len(data) and jpeg_header(data) == (32, 24, 3)
    stream = b"".join(jpegs)
    ends, start = [], 0
    while start < len(stream):
        start = jpeg_end(stream, start)
        ends.append(start)
    assert ends == list(np.cumsum([len(j) for j in jpegs]))
    assert jpeg_end(stream[:len(jpegs[0]) - 1]) is None           # incomplete: wait for more
    # the same frame scaled by ffmpeg without JPEG: equal up to JPEG's loss (luma compared;
    # JPEG keeps chroma at half resolution)
    raw = cv2.cvtColor(read_video(tmp_path / "v.mkv", size=(32, 24))[0], cv2.COLOR_RGB2GRAY)
    decoded = cv2.imdecode(np.frombuffer(jpegs[0], np.uint8), cv2.IMREAD_GRAYSCALE)
    assert np.abs(decoded.astype(float) - raw).mean() < 3
    with pytest.raises(VideoError, match="no SOI marker"):
        jpeg_end(b"\x00\x01\x02\x03\x04")
    with pytest.raises(VideoError, match="without a frame header"):
        jpeg_header(b"\xff\xd8\xff\xd9")


def test_unreadable_inputs_say_why(tmp_path):
    (tmp_path / "empty.avi").write_bytes(b"")
    with pytest.raises(VideoError, match="empty file"):
        probe(tmp_path / "empty.avi")
    with pytest.raises(VideoError, match="no such file"):
        probe(tmp_path / "missing.avi")
    (tmp_path / "text.avi").write_text("not a video")
    with pytest.raises(VideoError, match="not a readable video"):
        probe(tmp_path / "text.avi")
