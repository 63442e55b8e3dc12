"""Group transforms: one draw per clip, crops at TSN's offsets, flips that invert flow x."""
import numpy as np
import pytest

from tsn_pipeline import transforms as T


def _rgb_clip(s=3, l=1, h=60, w=80, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (s, l, h, w, 3), dtype=np.uint8)


def _flow_clip(s=2, l=5, h=60, w=80, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (s, l, 2, h, w), dtype=np.uint8)


def _pil_resize(image, width, height):
    """tsn-pytorch's resize: PIL ``Image.resize((w, h), BILINEAR)`` on an RGB or L image."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((width, height),
                                                                          Image.BILINEAR))


def _assert_like_pil(got, want):
    """torch's antialiased bilinear vs PIL's: rounding may differ by 1 grey level."""
    d = np.abs(got.astype(int) - want.astype(int))
    assert d.max() <= 1 and d.mean() < 0.05, (d.max(), d.mean())


def test_crop_sizes_of_tsn_scale_set():
    # 340x256 frames, 224 output: sizes int(256 * (1, .875, .75, .66)) = 256, 224, 192, 168
    pairs = T.crop_size_pairs(340, 256, 224, T.RGB_SCALES)
    assert set(pairs) == {(256, 256), (224, 256), (256, 224), (224, 224), (192, 224), (224, 192),
                          (192, 192), (168, 192), (192, 168), (168, 168)}
    flow_pairs = T.crop_size_pairs(340, 256, 224, T.FLOW_SCALES)
    assert max(max(p) for p in flow_pairs) == 256 and min(min(p) for p in flow_pairs) == 192


def test_fix_offsets_by_hand():
    # 340x256 image, 224x224 crop: w step (340-224)//4 = 29, h step (256-224)//4 = 8
    off = T.fix_offsets(340, 256, 224, 224, more_fix_crop=True)
    assert off[:5] == [(0, 0), (116, 0), (0, 32), (116, 32), (58, 16)]
    assert off[5:] == [(0, 16), (116, 16), (58, 32), (58, 0), (29, 8), (87, 8), (29, 24), (87, 24)]


def test_multiscale_crop_matches_its_params_and_is_shared_by_the_group():
    clip = _rgb_clip()
    t = T.MultiScaleCrop(32, "hwc")
    rng = np.random.default_rng(5)
    for _ in range(20):
        left, top, cw, ch = params = t.make_params(clip.shape, rng)
        assert (left, top) in T.fix_offsets(80, 60, cw, ch)
        assert (cw, ch) in T.crop_size_pairs(80, 60, 32, T.RGB_SCALES)
        out = t.apply(clip, params)
        assert out.shape == (3, 1, 32, 32, 3)
        for s in range(3):   # every image of the group cropped at the same window
            _assert_like_pil(out[s, 0], _pil_resize(clip[s, 0, top:top + ch, left:left + cw], 32, 32))


def test_flow_multiscale_crop_same_window_for_x_and_y():
    clip = _flow_clip()
    t = T.MultiScaleCrop(24, "flow")
    params = t.make_params(clip.shape, np.random.default_rng(1))
    left, top, cw, ch = params
    out = t.apply(clip, params)
    assert out.shape == (2, 5, 2, 24, 24)
    for s, l, c in [(0, 0, 0), (1, 4, 1), (1, 2, 0)]:
        _assert_like_pil(out[s, l, c], _pil_resize(clip[s, l, c, top:top + ch, left:left + cw], 24, 24))


def test_flip_inverts_flow_x_only():
    clip = _flow_clip()
    out = T.hflip(clip, "flow")
    np.testing.assert_array_equal(out[:, :, 0], 255 - clip[:, :, 0, :, ::-1])
    np.testing.assert_array_equal(out[:, :, 1], clip[:, :, 1, :, ::-1])
    f = np.random.default_rng(0).normal(size=(1, 2, 2, 4, 5)).astype(np.float32)
    g = T.hflip(f, "flow")
    np.testing.assert_array_equal(g[:, :, 0], -f[:, :, 0, :, ::-1])
    rgb = _rgb_clip()
    np.testing.assert_array_equal(T.hflip(rgb, "hwc"), rgb[..., ::-1, :])


def test_random_flip_is_one_draw_per_clip():
    clip = _flow_clip(s=3)
    t = T.RandomHorizontalFlip("flow")
    rng = np.random.default_rng(0)
    flips = 0
    for _ in range(40):
        out = t(clip, rng)
        flipped = [np.array_equal(out[s], T.hflip(clip[s], "flow")) for s in range(3)]
        assert len(set(flipped)) == 1       # all snippets or none
        flips += flipped[0]
    assert 5 < flips < 35


def test_ten_crop_corners_centre_and_flips():
    clip = _flow_clip(s=1, l=2, h=40, w=50)
    out = T.TenCrop(32, "flow")(clip)
    assert out.shape == (10, 1, 2, 2, 32, 32)
    # offsets: w step (50-32)//4 = 4, h step (40-32)//4 = 2 -> (0,0) (16,0) (0,8) (16,8) (8,4)
    for i, (left, top) in enumerate([(0, 0), (16, 0), (0, 8), (16, 8), (8, 4)]):
        np.testing.assert_array_equal(out[i], clip[..., top:top + 32, left:left + 32])
        np.testing.assert_array_equal(out[5 + i, :, :, 0], 255 - out[i, :, :, 0, :, ::-1])
        np.testing.assert_array_equal(out[5 + i, :, :, 1], out[i, :, :, 1, :, ::-1])


def test_center_three_crop_and_resize():
    clip = _rgb_clip(h=60, w=90)
    c = T.CenterCrop(40, "hwc")(clip)
    np.testing.assert_array_equal(c, clip[:, :, 10:50, 25:65])
    three = T.ThreeCrop(60, "hwc")(clip)
    assert three.shape == (3, 3, 1, 60, 60, 3)
    np.testing.assert_array_equal(three[2], clip[:, :, :, 30:90])
    r = T.Resize(30, "hwc")(clip)
    assert r.shape == (3, 1, 30, 45, 3)
    ev = T.eval_transform("flow", 32, "ten")(_flow_clip(h=60, w=80))
    assert ev.shape == (10, 2, 5, 2, 32, 32)     # short side 32*256//224 = 36, then 10 crops


def test_resize_many_planes_matches_pil_per_image():
    clip = _flow_clip(s=60, l=5, h=20, w=30)          # 600 planes resized at once
    out = T.resize(clip, "flow", 10, 12)
    for s, l, c in [(0, 0, 0), (59, 4, 1), (31, 2, 0)]:
        _assert_like_pil(out[s, l, c], _pil_resize(clip[s, l, c], 12, 10))


def test_resize_is_antialiased_like_pil_on_a_real_frame():
    """Row 3 of the fidelity table: shrinking a real frame as tsn-pytorch does (PIL bilinear,
    antialiased). Plain bilinear (cv2.INTER_LINEAR) is many grey levels off on the same crop."""
    import cv2

    cap = cv2.VideoCapture("tests/data/v_SoccerJuggling_g23_c01.avi")
    ok, bgr = cap.read()
    cap.release()
    assert ok
    frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)[None, None]          # (1, 1, H, W, 3)
    h, w = frame.shape[2:4]
    for size in (224, 112):                                            # shrink by 1.07 and 2.1
        crop = frame[:, :, :, :h]                                      # a square h x h window
        got = T.resize(crop, "hwc", size, size)[0, 0]
        want = _pil_resize(crop[0, 0], size, size)
        _assert_like_pil(got, want)
        plain = cv2.resize(np.ascontiguousarray(crop[0, 0]), (size, size),
                           interpolation=cv2.INTER_LINEAR)
        assert np.abs(plain.astype(int) - want).max() > 5
    # enlarging (a 168 crop -> 224) is plain bilinear in both
    small = frame[:, :, :168, :168]
    _assert_like_pil(T.resize(small, "hwc", 224, 224)[0, 0], _pil_resize(small[0, 0], 224, 224))


def test_short_side_truncates_and_centre_rounds_half_to_even():
    """Rows 4 and 5: torchvision's old Scale truncates the long side (int(w * size / h)) and
    its CenterCrop starts at round((W - size) / 2) with Python's round (half to even)."""
    # (h, w, size) -> int(w * size / h): 341 * 224 / 256 = 298.375 -> 298 (round gave 298 too);
    # 320 * 256 / 240 = 341.33 -> 341; 398 * 256 / 300 = 339.63 -> 339 (round: 340)
    assert T.short_side_size(256, 341, 224) == (224, 298)
    assert T.short_side_size(240, 320, 256) == (256, 341)
    assert T.short_side_size(300, 398, 256) == (256, 339)
    assert T.short_side_size(398, 300, 256) == (339, 256)        # portrait: width is short
    assert T.short_side_size(256, 340, 256) == (256, 340)
    # (length - size) / 2 = 3.5 -> 4 (floor gave 3); 2.5 -> 2; 1.5 -> 2; 16 -> 16
    assert [T.centre_offset(n, 10) for n in (17, 15, 13, 42)] == [4, 2, 2, 16]
    clip = _rgb_clip(s=1, h=17, w=15)
    np.testing.assert_array_equal(T.CenterCrop(10, "hwc")(clip), clip[:, :, 4:14, 2:12])
    assert T.Resize(256, "hwc")(_rgb_clip(s=1, h=300, w=398)).shape == (1, 1, 256, 339, 3)


def test_training_scales_and_flip_switch():
    """Row 2: tsn-pytorch crops RGB at 1, .875, .75, .66 and flow and RGB difference at 1,
    .875, .75 of the short side; ``flip=False`` leaves the flip out."""
    assert T.train_scales("rgb") == (1.0, 0.875, 0.75, 0.66)
    for modality in ("flow", "warped", "rgbdiff"):
        assert T.train_scales(modality) == (1.0, 0.875, 0.75)
    t = T.train_transform("rgbdiff", 32)
    assert t.transforms[0].scales == (1.0, 0.875, 0.75)
    assert isinstance(t.transforms[-1], T.RandomHorizontalFlip)
    no_flip = T.train_transform("flow", 32, flip=False)
    assert [type(x) for x in no_flip.transforms] == [T.MultiScaleCrop]
    clip = _flow_clip()
    for seed in range(8):   # the same crop as with the flip, never mirrored
        out = no_flip(clip, np.random.default_rng(seed))
        np.testing.assert_array_equal(out, no_flip.transforms[0](clip, np.random.default_rng(seed)))


def test_normalize_layouts_and_values():
    rgb = _rgb_clip(s=2, l=1, h=4, w=5)
    x = T.normalize(rgb, "rgb", (0.5, 0.4, 0.3), (0.2, 0.25, 0.5))
    assert tuple(x.shape) == (2, 3, 4, 5)
    np.testing.assert_allclose(x[1, 2].numpy(), (rgb[1, 0, :, :, 2] / 255 - 0.3) / 0.5, rtol=1e-5, atol=1e-6)
    flow = _flow_clip(s=2, l=5, h=4, w=5)
    f = T.normalize(flow, "flow", (0.5, 0.5), (0.25, 0.25))
    assert tuple(f.shape) == (2, 10, 4, 5)
    # channels interleave x0 y0 x1 y1 ...: channel 7 is y of field 3
    np.testing.assert_allclose(f[1, 7].numpy(), (flow[1, 3, 1] / 255 - 0.5) / 0.25, rtol=1e-5, atol=1e-6)
    # Caffe-style statistics (BN-Inception: mean 128/255, std 1/255) give exactly v - 128,
    # and RGB difference's identity (mean 0, std 1/255) exactly v, as tsn-pytorch's 0..255 input
    bgr = T.normalize(flow, "flow", (128 / 255,) * 2, (1 / 255,) * 2)
    assert np.array_equal(bgr.numpy(), flow.reshape(2, 10, 4, 5).astype(np.float32) - 128)
    raw = T.normalize(rgb, "rgbdiff", (0,) * 3, (1 / 255,) * 3)
    assert np.array_equal(raw.numpy(), np.moveaxis(rgb, -1, -3).reshape(2, 3, 4, 5).astype(np.float32))
    # exactly (v - 255 mean) / (255 std) in float32, per channel
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    m, sd = (np.float32([255.0 * v for v in stat])[:, None, None] for stat in (mean, std))
    want = (np.moveaxis(rgb, -1, -3).astype(np.float32) - m) / sd
    assert np.array_equal(T.normalize(rgb, "rgb", mean, std).numpy(), want.reshape(2, 3, 4, 5))
    diff = T.normalize(_rgb_clip(s=2, l=6, h=4, w=5), "rgbdiff", (0,) * 3, (1,) * 3)
    assert tuple(diff.shape) == (2, 18, 4, 5)
    crops = T.normalize(T.TenCrop(4, "flow")(flow), "flow", (0.5, 0.5), (0.25, 0.25))
    assert tuple(crops.shape) == (10, 2, 10, 4, 4)
    with pytest.raises(ValueError, match="2 values"):
        T.normalize(flow, "flow", (0.5,) * 3, (0.2,) * 3)


def test_random_transforms_need_an_rng_and_bad_layouts_fail():
    with pytest.raises(ValueError, match="rng"):
        T.MultiScaleCrop(32)(_rgb_clip())
    with pytest.raises(ValueError, match="layout"):
        T.CenterCrop(32, "chw")
    with pytest.raises(ValueError, match="modality"):
        T.layout_of("depth")


def test_train_transform_without_flip_never_mirrors():
    """--no-flip: the training transform is the multi-scale crop alone, draw for draw; with
    flips on, some draws of the same generator come out mirrored."""
    from tsn_pipeline.transforms import MultiScaleCrop, train_transform

    clip = np.random.default_rng(0).integers(0, 256, size=(3, 1, 40, 56, 3), dtype=np.uint8)
    mirrored = 0
    for seed in range(20):
        crop_only = MultiScaleCrop(32, "hwc")(clip, np.random.default_rng(seed))
        no_flip = train_transform("rgb", 32, flip=False)(clip, np.random.default_rng(seed))
        np.testing.assert_array_equal(no_flip, crop_only)
        with_flip = train_transform("rgb", 32)(clip, np.random.default_rng(seed))
        if not np.array_equal(with_flip, crop_only):
            np.testing.assert_array_equal(with_flip, crop_only[..., ::-1, :])
            mirrored += 1
    assert 0 < mirrored < 20
