"""Synthetic demo dataset: real video files whose classes only motion can tell apart.

Reads nothing; writes a small UCF101-shaped dataset that ``make demo`` runs every stage on::

    <out>/videos/<Class>/v_<Class>_g<GG>_c<CC>.avi    real video files (ffmpeg, default mpeg4)
    <out>/splits/classInd.txt, trainlist01.txt, testlist01.txt   (UCF101 format, split 1)
    <out>/motion.json    per video: class, object and background velocities (ground truth)

Each video is a textured object moving over a textured background while the camera pans:

- the class is the direction of the object's motion *relative to the background*
  (MoveLeft, MoveRight, MoveUp, MoveDown, Still);
- the object's size, shape and texture, the background texture, the object's start position
  and the camera pan (direction and speed, comparable to the object's speed) are drawn at
  random, independently of the class.

So a single RGB frame carries no class information (RGB is near chance), optical flow carries
it (object flow minus background flow), and warped flow, which removes the camera motion,
shows the object's own motion directly (easiest). Like UCF101, a *group* (``g``) shares its
background and object appearance; test groups are never seen in training (split 1: groups
1..``test_groups`` are the test set).

Velocities are in pixels per frame, image coordinates (x right, y down). With camera pan p
(the view moves by p over the world) and object motion v over the world, the background moves
by -p in the image and the object by v - p.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

CLASSES: Tuple[Tuple[str, Tuple[float, float]], ...] = (
    ("MoveLeft", (-1.0, 0.0)),
    ("MoveRight", (1.0, 0.0)),
    ("MoveUp", (0.0, -1.0)),
    ("MoveDown", (0.0, 1.0)),
    ("Still", (0.0, 0.0)),
)
CODEC_EXT = {"mpeg4": ".avi", "ffv1": ".avi", "libx264": ".mp4", "mjpeg": ".avi", "png": ".mkv"}


@dataclass(frozen=True)
class DemoConfig:
    """Size and difficulty of the demo dataset; ``seed`` makes it reproducible bit for bit."""

    num_classes: int = 5                 # first N of CLASSES (4..5)
    groups: int = 8                      # per class; groups 1..test_groups are the test set
    clips_per_group: int = 3
    test_groups: int = 3
    frames: int = 16
    width: int = 96
    height: int = 72
    fps: float = 12.0
    object_speed: Tuple[float, float] = (1.2, 1.8)     # px/frame relative to the background
    pan_speed: Tuple[float, float] = (0.3, 1.0)        # px/frame camera pan, random direction
    object_size: Tuple[int, int] = (14, 20)            # px, side / diameter
    noise: float = 2.0                   # sensor noise std (grey levels)
    codec: str = "mpeg4"
    seed: int = 0

    def __post_init__(self):
        if not 2 <= self.num_classes <= len(CLASSES):
            raise ValueError(f"num_classes {self.num_classes} outside 2..{len(CLASSES)}")
        if not 1 <= self.test_groups < self.groups:
            raise ValueError(f"test_groups {self.test_groups} must be in 1..groups-1 "
                             f"({self.groups - 1}) so both splits have videos")
        if self.clips_per_group < 1:
            raise ValueError(f"clips_per_group {self.clips_per_group} must be >= 1")
        if self.frames < 8:
            raise ValueError(f"frames {self.frames} must be >= 8 (TSN samples 3 segments)")
        if self.width < 32 or self.height < 32 or self.width % 2 or self.height % 2:
            raise ValueError(f"size {self.width}x{self.height}: both must be even and >= 32")
        if self.codec not in CODEC_EXT:
            raise ValueError(f"codec {self.codec!r} not in {sorted(CODEC_EXT)}")
        for name in ("object_speed", "pan_speed", "object_size"):
            lo, hi = getattr(self, name)
            if lo < 0 or hi < lo:
                raise ValueError(f"{name} {getattr(self, name)} must be (low, high), 0 <= low <= high")
        if self.object_size[1] * 2 > min(self.width, self.height):
            raise ValueError(f"object size {self.object_size[1]} too large for "
                             f"{self.width}x{self.height}")

    @property
    def class_names(self) -> List[str]:
        return [c for c, _ in CLASSES[: self.num_classes]]

    @property
    def num_videos(self) -> int:
        return self.num_classes * self.groups * self.clips_per_group


def _texture(rng: np.random.Generator, height: int, width: int, scales=(3, 8, 20)) -> np.ndarray:
    """Smooth random colour texture (H, W, 3) float32 in 0..255 with structure at several
    scales, so that both optical flow and feature matching (camera motion) have gradients."""
    import cv2

    tex = np.zeros((height, width, 3), np.float32)
    for s, weight in zip(scales, (0.5, 0.3, 0.2)):
        small = rng.random((height // s + 2, width // s + 2, 3)).astype(np.float32)
        tex += weight * cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    tint = rng.random(3).astype(np.float32) * 0.6 + 0.4
    tex = (tex - tex.min()) / (tex.max() - tex.min() + 1e-6) * tint
    return np.clip(tex * 255.0, 0, 255).astype(np.float32)


def _object(rng: np.random.Generator, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Object patch (s, s, 3) float32 and its alpha mask (s, s) float32 (disc or square)."""
    import cv2

    patch = _texture(rng, size, size, scales=(2, 4, 8))
    base = rng.random(3).astype(np.float32) * 200 + 30           # its own colour ...
    patch = np.clip(base + (patch - patch.mean()) * 0.8, 0, 255)   # ... and a visible texture
    mask = np.zeros((size, size), np.float32)
    if rng.random() < 0.5:
        cv2.circle(mask, (size // 2, size // 2), size // 2, 1.0, -1, lineType=cv2.LINE_AA)
    else:
        mask[1:-1, 1:-1] = 1.0
    return patch, mask


def _unit(angle: float) -> np.ndarray:
    return np.array([math.cos(angle), math.sin(angle)])


def render_video(class_index: int, group_rng: np.random.Generator, clip_rng: np.random.Generator,
                 cfg: DemoConfig) -> Tuple[np.ndarray, Dict]:
    """Frames ``(T, H, W, 3)`` uint8 RGB of one clip and its ground-truth motion.

    ``group_rng`` draws what a group shares (background, object appearance) and must be in the
    same state for every clip of a group; ``clip_rng`` draws the clip's motion.
    """
    import cv2

    t_len, w, h = cfg.frames, cfg.width, cfg.height
    direction = np.array(CLASSES[class_index][1])
    # group appearance: drawn first so it is identical for every clip of the group
    size = int(group_rng.integers(cfg.object_size[0], cfg.object_size[1] + 1))
    patch, mask = _object(group_rng, size)
    max_pan = cfg.pan_speed[1]
    margin = int(math.ceil(max_pan * t_len)) + 4
    world = _texture(group_rng, h + 2 * margin, w + 2 * margin)
    # clip motion
    speed = clip_rng.uniform(*cfg.object_speed)
    v = direction * speed                                       # object over the world
    pan = _unit(clip_rng.uniform(0, 2 * math.pi)) * clip_rng.uniform(*cfg.pan_speed)
    img_v = v - pan                                             # object in the image
    travel = img_v * (t_len - 1)
    # Where the object is must not tell the axis of its motion: a track along x keeps the
    # object away from the left/right edges more often than a still axis would. So on an axis
    # the class does not move along, the start is spread the same way, as if the object
    # travelled a hypothetical distance ``spread`` there (drawn like a real one).
    spread = np.where(direction == 0, clip_rng.uniform(*cfg.object_speed) * (t_len - 1), 0.0)
    lo = np.maximum(0.0, -travel) + 1.0
    hi = np.array([w - size, h - size], float) - np.maximum(0.0, travel) - 1.0 - spread
    hi = np.maximum(hi, lo)                                     # may leave the frame partly
    start = clip_rng.uniform(lo, hi) + clip_rng.uniform(0.0, 1.0, 2) * spread
    cam0 = np.array([margin, margin], float) - pan * (t_len - 1) / 2   # view stays in world
    noise_rng = np.random.default_rng(clip_rng.integers(1 << 31))
    frames = np.empty((t_len, h, w, 3), np.uint8)
    for t in range(t_len):
        cam = cam0 + pan * t
        view = cv2.warpAffine(world, np.float32([[1, 0, -cam[0]], [0, 1, -cam[1]]]), (w, h),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        pos = start + img_v * t
        m = np.float32([[1, 0, pos[0]], [0, 1, pos[1]]])
        obj = cv2.warpAffine(patch, m, (w, h), flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_LINEAR)[..., None]
        img = view * (1 - alpha) + obj * alpha
        if cfg.noise > 0:
            img = img + noise_rng.normal(0, cfg.noise, img.shape).astype(np.float32)
        frames[t] = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    meta = {
        "class_name": CLASSES[class_index][0], "label": class_index,
        "object_velocity": [round(float(x), 4) for x in v],           # relative to background
        "background_velocity": [round(float(x), 4) for x in -pan],    # in the image
        "object_image_velocity": [round(float(x), 4) for x in img_v],
        "object_start": [round(float(x), 3) for x in start], "object_size": size,
    }
    return frames, meta


def video_name(class_name: str, group: int, clip: int) -> str:
    """UCF101-style id: ``v_MoveLeft_g01_c02``."""
    return f"v_{class_name}_g{group:02d}_c{clip:02d}"


def plan(cfg: DemoConfig) -> List[Tuple[int, int, int, str]]:
    """(class index, group, clip, split) of every video, in a fixed order."""
    out = []
    for ci in range(cfg.num_classes):
        for g in range(1, cfg.groups + 1):
            for c in range(1, cfg.clips_per_group + 1):
                out.append((ci, g, c, "test" if g <= cfg.test_groups else "train"))
    return out


def _rngs(cfg: DemoConfig, ci: int, g: int, c: int):
    group = np.random.default_rng([cfg.seed, ci, g])
    clip = np.random.default_rng([cfg.seed, ci, g, c, 1])
    return group, clip


def _write_one(args) -> Dict:
    from .videoio import write_video

    cfg, ci, g, c, split, path = args
    group_rng, clip_rng = _rngs(cfg, ci, g, c)
    frames, meta = render_video(ci, group_rng, clip_rng, cfg)
    write_video(path, frames, fps=cfg.fps, codec=cfg.codec)
    meta.update(split=split, group=g, clip=c)
    return meta


def make_demo_dataset(out, cfg: DemoConfig = DemoConfig(), workers: int = 1,
                      overwrite: bool = False) -> Dict:
    """Write the dataset under ``out`` (see the module docstring); returns a summary.

    A finished dataset (``motion.json`` present, same config) is left alone, so ``make demo``
    can rerun cheaply; another config in the same folder is refused unless ``overwrite``.
    """
    out = Path(out)
    motion_file = out / "motion.json"
    if motion_file.exists() and not overwrite:
        try:
            old = json.loads(motion_file.read_text()).get("config")
        except ValueError:
            old = None
        if old == _config_json(cfg):
            return _summary(out, cfg, skipped=True)
        raise FileExistsError(f"{out} holds a demo dataset made with other settings; use "
                              "another folder or --overwrite")
    names = cfg.class_names
    jobs = []
    for ci, g, c, split in plan(cfg):
        vid = video_name(names[ci], g, c)
        path = out / "videos" / names[ci] / (vid + CODEC_EXT[cfg.codec])
        path.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((cfg, ci, g, c, split, str(path)))
    if workers > 1:
        from joblib import Parallel, delayed

        metas = Parallel(n_jobs=workers)(delayed(_write_one)(j) for j in jobs)
    else:
        metas = [_write_one(j) for j in jobs]
    splits = out / "splits"
    splits.mkdir(parents=True, exist_ok=True)
    (splits / "classInd.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    train, test, videos = [], [], {}
    for job, meta in zip(jobs, metas):
        _, ci, g, c, split, path = job
        rel = f"{names[ci]}/{Path(path).name}"
        (test if split == "test" else train).append(
            rel if split == "test" else f"{rel} {ci + 1}")
        videos[video_name(names[ci], g, c)] = meta
    (splits / "trainlist01.txt").write_text("".join(x + "\n" for x in train))
    (splits / "testlist01.txt").write_text("".join(x + "\n" for x in test))
    tmp = motion_file.with_name(motion_file.name + ".tmp")
    tmp.write_text(json.dumps({"config": _config_json(cfg), "classes": names, "videos": videos},
                              indent=1, sort_keys=True) + "\n")
    tmp.replace(motion_file)
    return _summary(out, cfg, skipped=False)


def _config_json(cfg: DemoConfig) -> Dict:
    return json.loads(json.dumps(asdict(cfg)))


def _summary(out: Path, cfg: DemoConfig, skipped: bool) -> Dict:
    n_test = cfg.num_classes * cfg.test_groups * cfg.clips_per_group
    return {"out": str(out), "videos": cfg.num_videos, "train": cfg.num_videos - n_test,
            "test": n_test, "classes": cfg.class_names, "frames": cfg.frames,
            "size": [cfg.width, cfg.height], "codec": cfg.codec, "skipped": skipped,
            "splits": str(out / "splits"), "videos_dir": str(out / "videos")}
