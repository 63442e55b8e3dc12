"""Video files in and out through ffmpeg (bundled by imageio-ffmpeg; no ffprobe needed).

``probe`` reads the stream header from ``ffmpeg -i``; ``iter_frames`` pipes decoded RGB frames
out of ffmpeg (commands built with ffmpeg-python) without writing a file per frame;
``write_video`` encodes uint8 frames (tests and the demo data generator use it).

Frame counts are what decodes, never the header's claim: some real files (HMDB51's, for one)
announce a frame more than they hold. Frames are passed through with their own timestamps
(``-fps_mode passthrough``), so gaps are not filled with duplicates unless ``fps`` asks for
resampling.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

INTERPOLATIONS = ("bilinear", "bicubic", "area", "lanczos", "neighbor")


class VideoError(Exception):
    """A video cannot be opened or decoded; the message names the file and the reason."""


def ffmpeg_exe() -> str:
    """``$TSN_FFMPEG`` if set (a path or a name on PATH), else imageio-ffmpeg's binary."""
    chosen = os.environ.get("TSN_FFMPEG")
    if chosen:
        found = chosen if os.path.isfile(chosen) else shutil.which(chosen)
        if not found:
            raise VideoError(f"TSN_FFMPEG={chosen!r}: no such executable")
        return found
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise VideoError("imageio-ffmpeg is not installed and TSN_FFMPEG is not set") from exc
    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class VideoInfo:
    width: int            # display size (after rotation metadata)
    height: int
    fps: float            # 0.0 when the header gives none
    codec: str
    duration: float       # seconds, 0.0 when unknown
    rotation: int = 0

    @property
    def header_frames(self) -> int:
        """What the header implies (duration x fps); the decoded count may be smaller."""
        return int(round(self.duration * self.fps))


_STREAM_RE = re.compile(r"Stream #\d+:\d+.*?: Video: (?P<codec>[^,\s]+)(?P<rest>.*)")
_SIZE_RE = re.compile(r", (\d{1,5})x(\d{1,5})[, \[]")
_FPS_RE = re.compile(r", ([\d.]+)(k?) (fps|tbr)")
_DUR_RE = re.compile(r"Duration: (\d+):(\d+):([\d.]+)")
_ROT_RE = re.compile(r"rotation of (-?[\d.]+) degrees")


def _last_error_lines(text: str, n: int = 2) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return "; ".join(lines[-n:]) if lines else "no output from ffmpeg"


def check_readable(path: str) -> None:
    """Fail early, with the reason, on what ffmpeg would report only vaguely."""
    if not os.path.exists(path):
        raise VideoError(f"{path}: no such file")
    if not os.access(path, os.R_OK):
        raise VideoError(f"{path}: not readable (permission denied)")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")


def parse_header(path: str, text: str) -> VideoInfo:
    """VideoInfo from what ``ffmpeg -i`` prints about the input's first video stream."""
    text = text.split("Output #0", 1)[0]
    match = _STREAM_RE.search(text)
    if match is None:
        reason = _last_error_lines(text) if "rror" in text or "Invalid" in text else "no video stream"
        raise VideoError(f"{path}: not a readable video ({reason})")
    rest = match.group("rest")
    size = _SIZE_RE.search(rest + ",")
    if size is None:
        raise VideoError(f"{path}: video stream without a frame size ({match.group(0)[:120]})")
    width, height = int(size.group(1)), int(size.group(2))
    fps = 0.0
    fps_match = _FPS_RE.search(rest)
    if fps_match:
        fps = float(fps_match.group(1)) * (1000.0 if fps_match.group(2) else 1.0)
    dur = _DUR_RE.search(text)
    duration = (int(dur.group(1)) * 3600 + int(dur.group(2)) * 60 + float(dur.group(3))) if dur else 0.0
    rot = _ROT_RE.search(text)
    rotation = int(round(float(rot.group(1)))) % 360 if rot else 0
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(width, height, fps, match.group("codec"), duration, rotation)


def probe(path) -> VideoInfo:
    """Read the first video stream's header via ``ffmpeg -i`` (ffprobe is not needed)."""
    path = str(path)
    check_readable(path)
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, timeout=120)
    return parse_header(path, proc.stderr.decode("utf-8", "replace"))


def output_size(width: int, height: int, size: Optional[Tuple[int, int]] = None,
                short_side: Optional[int] = None) -> Tuple[int, int]:
    """(W, H) after resizing: fixed ``size``, or the short side scaled to ``short_side``.

    Example: 320x240 with short_side=256 -> (341, 256) (rounded to nearest, like mmaction2).
    """
    if size is not None and short_side is not None:
        raise ValueError("give a fixed size or a short side, not both")
    if size is not None:
        return int(size[0]), int(size[1])
    if short_side is not None:
        if width <= height:
            return int(short_side), max(1, int(round(height * short_side / width)))
        return max(1, int(round(width * short_side / height))), int(short_side)
    return width, height


class FrameReader:
    """Iterate decoded RGB frames of one video; errors ffmpeg reported are in ``.errors``.

    >>> with FrameReader("v.avi", size=(340, 256)) as r:   # doctest: +SKIP
    ...     frames = list(r)                              # (256, 340, 3) uint8 each
    """

    def __init__(self, path, size: Optional[Tuple[int, int]] = None,
                 short_side: Optional[int] = None, fps: Optional[float] = None,
                 interpolation: str = "bilinear", info: Optional[VideoInfo] = None):
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {interpolation!r} not in {INTERPOLATIONS}")
        self.path = str(path)
        self.info = info or probe(self.path)
        self.width, self.height = output_size(self.info.width, self.info.height, size, short_side)
        self.fps = float(fps) if fps else self.info.fps
        self._cmd = self._command(fps, interpolation)
        self._proc: Optional[subprocess.Popen] = None
        self._stderr: List[bytes] = []
        self.returncode: Optional[int] = None

    def _command(self, fps, interpolation) -> List[str]:
        import ffmpeg

        stream = ffmpeg.input(self.path)["v:0"]
        if fps:
            stream = stream.filter("fps", fps=float(fps))
        if (self.width, self.height) != (self.info.width, self.info.height):
            stream = stream.filter("scale", self.width, self.height, flags=interpolation)
        out = stream.output("pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough")
        args = out.global_args("-nostdin", "-hide_banner", "-v", "error").compile(cmd=ffmpeg_exe())
        return list(args)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _start(self, bufsize: int):
        self._proc = subprocess.Popen(self._cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, bufsize=bufsize)
        drain = threading.Thread(target=self._drain, args=(self._proc.stderr,), daemon=True)
        drain.start()
        return drain

    def __iter__(self) -> Iterator[np.ndarray]:
        frame_bytes = self.width * self.height * 3
        drain = self._start(frame_bytes)
        try:
            while True:
                buf = _read_exact(self._proc.stdout, frame_bytes)
                if len(buf) < frame_bytes:
                    break
                yield np.frombuffer(buf, dtype=np.uint8).reshape(self.height, self.width, 3)
        finally:
            self.close()
            drain.join(timeout=10)

    def _drain(self, pipe):
        with pipe:
            for line in iter(pipe.readline, b""):
                if len(self._stderr) < 200:
                    self._stderr.append(line)

    @property
    def errors(self) -> str:
        return b"".join(self._stderr).decode("utf-8", "replace").strip()

    def close(self):
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        self.returncode = proc.wait()


class JpegReader(FrameReader):
    """Like FrameReader, but ffmpeg encodes each frame as JPEG itself (mjpeg, ``-q:v qscale``).

    Iterating yields one JPEG file (bytes) per decoded frame: the same bytes ``ffmpeg -q:v N
    img_%05d.jpg`` writes, without a file per frame. Cheaper than raw RGB + OpenCV's encoder
    because ffmpeg encodes from its own YUV frames (no RGB conversion, no raw pipe), and it
    runs ffmpeg once: the header (``.info``) and output size are read from that run's log
    (``-v level+info``), so they are known after iterating.
    """

    def __init__(self, path, size=None, short_side=None, fps=None, interpolation="bilinear",
                 qscale: int = 2):
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {interpolation!r} not in {INTERPOLATIONS}")
        if not 1 <= int(qscale) <= 31:
            raise ValueError(f"JPEG qscale {qscale} outside 1..31 (lower is better)")
        if size is not None and short_side is not None:
            raise ValueError("give a fixed size or a short side, not both")
        self.path = str(path)
        check_readable(self.path)
        self.info: Optional[VideoInfo] = None
        self.width = self.height = None
        self.fps = float(fps) if fps else None
        self._proc = None
        self._stderr: List[bytes] = []
        self.returncode = None
        self._cmd = self._jpeg_command(size, short_side, fps, interpolation, int(qscale))

    def _jpeg_command(self, size, short_side, fps, interpolation, qscale) -> List[str]:
        import ffmpeg

        stream = ffmpeg.input(self.path)["v:0"]
        if fps:
            stream = stream.filter("fps", fps=float(fps))
        if size is not None:
            stream = stream.filter("scale", int(size[0]), int(size[1]), flags=interpolation)
        elif short_side is not None:   # same rounding as output_size()
            s = int(short_side)
            stream = stream.filter("scale", f"if(lte(iw,ih),{s},round(iw*{s}/ih))",
                                   f"if(lte(iw,ih),round(ih*{s}/iw),{s})", flags=interpolation)
        out = stream.output("pipe:", format="image2pipe", vcodec="mjpeg", pix_fmt="yuvj420p",
                            fps_mode="passthrough", **{"q:v": qscale})
        return list(out.global_args("-nostdin", "-hide_banner", "-nostats", "-v", "level+info")
                    .compile(cmd=ffmpeg_exe()))

    def __iter__(self) -> Iterator[bytes]:
        drain = self._start(1 << 20)
        buf = bytearray()
        try:
            while True:
                chunk = self._proc.stdout.read1(1 << 20)
                if not chunk:
                    break
                buf += chunk
                start = 0
                while True:
                    end = jpeg_end(buf, start)
                    if end is None:
                        break
                    if self.width is None:
                        self.width, self.height, _ = jpeg_header(buf, start)
                    yield bytes(buf[start:end])
                    start = end
                del buf[:start]
        finally:
            self.close()
            drain.join(timeout=10)
        self.info = parse_header(self.path, self._log())
        if self.fps is None:
            self.fps = self.info.fps

    def _log(self) -> str:
        return b"".join(self._stderr).decode("utf-8", "replace")

    def _drain(self, pipe):
        # keep the header lines and the first problems; drop ffmpeg's chatter in between
        with pipe:
            for line in iter(pipe.readline, b""):
                if len(self._stderr) < 60 or (b"[error]" in line or b"[fatal]" in line) \
                        and len(self._stderr) < 300:
                    self._stderr.append(line)

    @property
    def errors(self) -> str:
        lines = [ln.replace("[error] ", "").replace("[fatal] ", "")
                 for ln in self._log().splitlines() if "[error]" in ln or "[fatal]" in ln]
        return "\n".join(lines).strip()


def jpeg_header(buf, start: int = 0) -> Tuple[int, int, int]:
    """(width, height, channels) from the frame header (SOF) of the JPEG at ``buf[start]``.

    Reads marker segments only, never pixel data: the one JPEG header parser (decode's frame
    sizes, rawframes import of terabytes of files without decoding them).
    """
    i, n = start + 2, len(buf)
    while i + 4 <= n:
        if buf[i] != 0xFF:
            raise VideoError(f"JPEG marker expected at byte {i - start}")
        marker = buf[i + 1]
        if marker == 0xFF:                                    # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 10 > n:
                break
            return (buf[i + 7] << 8) | buf[i + 8], (buf[i + 5] << 8) | buf[i + 6], buf[i + 9]
        i += 2 + ((buf[i + 2] << 8) | buf[i + 3])
    raise VideoError("JPEG without a frame header (SOF)")


_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def jpeg_end(buf, start: int = 0) -> Optional[int]:
    """End offset of the complete JPEG starting at ``buf[start]``, or None if incomplete.

    Walks the marker segments (their lengths) up to each scan, then the entropy-coded data,
    where 0xFF is followed by 0x00 (stuffing), 0xFF (fill) or RST0..7; any other marker ends
    the scan. So 0xFFD9 bytes inside tables cannot be mistaken for the end of the image.
    """
    n = len(buf)
    if n - start < 4:
        return None
    if buf[start] != 0xFF or buf[start + 1] != 0xD8:
        raise VideoError(f"JPEG stream out of sync at byte {start} (no SOI marker)")
    i = start + 2
    while i + 1 < n:
        if buf[i] != 0xFF:
            raise VideoError(f"JPEG stream: expected a marker at byte {i}")
        marker = buf[i + 1]
        if marker == 0xFF:                      # fill byte before a marker
            i += 1
            continue
        if marker == 0xD9:                      # EOI
            return i + 2
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            i += 2
            continue
        if i + 3 >= n:
            return None
        seg_end = i + 2 + ((buf[i + 2] << 8) | buf[i + 3])
        if marker != 0xDA:                      # not a scan: skip the segment
            i = seg_end
            continue
        # entropy-coded data of the scan: the first 0xFF followed by anything but 0x00
        # (stuffing), 0xFF (fill) or RST0..7 is the marker that ends it
        found = _SCAN_END.search(buf, seg_end)
        if found is None:
            return None
        i = found.start()
    return None


def _read_exact(stream, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_video(path, size=None, short_side=None, fps=None, interpolation="bilinear") -> np.ndarray:
    """All decoded frames ``(T, H, W, 3)`` uint8 RGB; raises VideoError when none decode."""
    with FrameReader(path, size, short_side, fps, interpolation) as reader:
        frames = list(reader)
    if not frames:
        raise VideoError(f"{path}: no frame decodes ({reader.errors or 'ffmpeg gave no frames'})")
    return np.stack(frames)


_CODECS = {
    # codec -> (ffmpeg encoder, pixel format in the file, extra output options)
    "ffv1": ("ffv1", "bgr0", {}),                     # lossless RGB
    "png": ("png", "rgb24", {}),                      # lossless RGB
    "libx264": ("libx264", "yuv420p", {"crf": 18, "preset": "veryfast"}),
    "mpeg4": ("mpeg4", "yuv420p", {"q:v": 3}),
    "mjpeg": ("mjpeg", "yuvj420p", {"q:v": 3}),
}


def write_video(path, frames: Sequence[np.ndarray], fps: float = 25.0, codec: str = "ffv1") -> None:
    """Encode uint8 RGB frames (T, H, W, 3) into ``path`` (container from the extension).

    ``ffv1`` and ``png`` are lossless (use .mkv or .avi); ``libx264``/``mpeg4`` need even sizes.
    """
    import ffmpeg

    if codec not in _CODECS:
        raise ValueError(f"codec {codec!r} not in {sorted(_CODECS)}")
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    encoder, pix_fmt, extra = _CODECS[codec]
    args = (ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", framerate=fps)
            .output(str(path), vcodec=encoder, pix_fmt=pix_fmt, **extra)
            .global_args("-nostdin", "-hide_banner", "-v", "error", "-y")
            .compile(cmd=ffmpeg_exe()))
    proc = subprocess.run(args, input=np.ascontiguousarray(frames).tobytes(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise VideoError(f"{path}: ffmpeg could not encode ({_last_error_lines(proc.stderr.decode('utf-8', 'replace'))})")
