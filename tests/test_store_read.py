"""The shard reader's read path: payload locations indexed at open, one pread per run of
consecutive items, decoding into one array; the same bytes and arrays as plain h5py reads."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from tsn_pipeline import store

PATTERNS = [[0], [7], [2, 3, 4], [4, 0, 2], [1, 1, 2], [5, 6, 0, 1], list(range(8))]


def decoded_as_before(payloads, color=True):
    """What the reader returned before: cv2's BGR decode, converted, stacked."""
    import cv2

    imgs = [cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR if color
                         else cv2.IMREAD_GRAYSCALE) for p in payloads]
    return np.stack([cv2.cvtColor(i, cv2.COLOR_BGR2RGB) if color else i for i in imgs])


def h5py_payloads(path, video_id, stream, indices):
    with h5py.File(path, "r") as f:
        data, off = f[f"videos/{video_id}/{stream}"], f[f"videos/{video_id}/{stream}_offsets"][()]
        return [data[off[i]:off[i + 1]].tobytes() for i in indices]


@pytest.fixture
def frame_shard(make_video, cli_runner, tmp_path):
    make_video("v/a.mkv", n=8, seed=5)
    make_video("v/b.mkv", n=8, seed=6)
    r = cli_runner("decode", tmp_path / "v", "--out", tmp_path / "out", "--size", "32x24",
                   "--no-progress")
    assert r.exit_code == 0, r.output
    return tmp_path / "out" / "frames-0-of-1.h5"


def test_reads_equal_plain_h5py_reads_for_any_index_pattern(frame_shard):
    shards = store.open_shards(frame_shard)
    for vid in ("a", "b"):
        for idx in PATTERNS:
            want = h5py_payloads(frame_shard, vid, "rgb", idx)
            assert shards.read_encoded(vid, "rgb", idx) == want, (vid, idx)
            rgb = shards.read_frames(vid, idx)
            assert rgb.shape == (len(idx), 24, 32, 3) and rgb.dtype == np.uint8
            np.testing.assert_array_equal(rgb, decoded_as_before(want))
            np.testing.assert_array_equal(rgb[0], store.decode_image(want[0]))
            gray = shards.read_gray(vid, "rgb", idx)
            np.testing.assert_array_equal(gray, decoded_as_before(want, color=False))
    with pytest.raises(IndexError, match="index 8 outside 0..7"):
        shards.read_encoded("a", "rgb", [2, 8])
    with pytest.raises(store.StoreError, match="no stream 'tvl1_x'"):
        shards.read_encoded("a", "tvl1_x", [0])
    shards.close()


def test_chunked_compressed_streams_are_read_through_h5py(frame_shard, tmp_path):
    """Another writer's layout (chunked, gzip): no file offset to pread, same payloads."""
    other = tmp_path / "other" / "frames-0-of-1.h5"
    other.parent.mkdir()
    with h5py.File(frame_shard, "r") as src, h5py.File(other, "w") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        group = dst.create_group("videos/a")
        for key, value in src["videos/a"].attrs.items():
            group.attrs[key] = value
        group.create_dataset("rgb", data=src["videos/a/rgb"][()], chunks=(1024,),
                             compression="gzip")
        group.create_dataset("rgb_offsets", data=src["videos/a/rgb_offsets"][()])
    shards = store.open_shards(other)
    for idx in PATTERNS:
        assert shards.read_encoded("a", "rgb", idx) == h5py_payloads(frame_shard, "a", "rgb", idx)
    np.testing.assert_array_equal(shards.read_frames("a", [3, 1]),
                                  store.open_shards(frame_shard).read_frames("a", [3, 1]))


def test_a_shard_rewritten_after_open_is_refused_not_misread(frame_shard, cli_runner, tmp_path):
    shards = store.open_shards(frame_shard)            # indexed, no payload read yet
    r = cli_runner("decode", tmp_path / "v", "--out", tmp_path / "out", "--size", "48x36",
                   "--overwrite", "--no-progress")
    assert r.exit_code == 0, r.output
    with pytest.raises(store.StoreError, match="changed after it was opened"):
        shards.read_frames("a", [0])
    assert store.open_shards(frame_shard).read_frames("a", [0]).shape == (1, 36, 48, 3)


def test_png_and_jpeg_decode_to_the_pixels_of_the_old_decoder():
    img = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    png, jpeg = store.encode_image(img, "png"), store.encode_image(img, "jpeg", 90)
    np.testing.assert_array_equal(store.decode_image(png), img)        # lossless, RGB order
    np.testing.assert_array_equal(store.decode_images([png, png])[1], img)
    for payload in (png, jpeg):
        np.testing.assert_array_equal(store.decode_images([payload, payload]),
                                      decoded_as_before([payload, payload]))
    with pytest.raises(store.StoreError, match="one size"):
        store.decode_images([png, store.encode_image(img[:8], "png")])


def test_random_reads_across_shards_equal_a_plain_reference_decode(make_video, cli_runner,
                                                                   tmp_path):
    """TSN's access pattern (a few random frames per video, any order, repeats, single
    frames) over several videos in two shards: the arrays of cv2.imdecode of the payload
    bytes read with h5py, converted BGR -> RGB (or gray)."""
    for k in range(5):
        make_video(f"v/c{k}.mkv", n=9 + k, seed=10 + k)
    r = cli_runner("decode", tmp_path / "v", "--out", tmp_path / "out", "--size", "40x30",
                   "--num-shards", "2", "--shard-index", "0", "--no-progress")
    assert r.exit_code == 0, r.output
    r = cli_runner("decode", tmp_path / "v", "--out", tmp_path / "out", "--size", "40x30",
                   "--num-shards", "2", "--shard-index", "1", "--no-progress")
    assert r.exit_code == 0, r.output
    shards = store.open_shards(tmp_path / "out")
    assert len(shards.paths) == 2 and len({shards[v].shard for v in shards.ids}) == 2
    rng = np.random.default_rng(0)
    for _ in range(6):
        for vid in shards.ids:
            n = shards[vid].length
            for idx in (sorted(rng.choice(n, 3, replace=False).tolist()),
                        rng.integers(0, n, 4).tolist(), [int(rng.integers(0, n))]):
                want = h5py_payloads(shards[vid].shard, vid, "rgb", idx)
                np.testing.assert_array_equal(shards.read_frames(vid, idx), decoded_as_before(want))
                np.testing.assert_array_equal(shards.read_gray(vid, "rgb", idx),
                                              decoded_as_before(want, color=False))
    shards.close()
