"""`tsn make-demo-data`: write the synthetic demo dataset (see tsn_pipeline.demo)."""
from __future__ import annotations

import json

import click

from .options import bad_settings, cap_workers, fails_with


def _size(ctx, param, value):
    try:
        w, h = (int(x) for x in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not WIDTHxHEIGHT (e.g. 96x72)") from None
    return w, h


def _range(ctx, param, value):
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    try:
        lo, hi = (float(x) for x in str(value).split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not LOW,HIGH (e.g. 0.6,1.6)") from None
    return lo, hi


@click.command("make-demo-data")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--classes", "num_classes", type=click.IntRange(2, 5), default=5, show_default=True,
              help="Number of classes (MoveLeft, MoveRight, MoveUp, MoveDown, Still).")
@click.option("--groups", type=click.IntRange(min=2), default=8, show_default=True,
              help="Groups per class (shared background and object, like UCF101's g01..g25).")
@click.option("--clips-per-group", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--test-groups", type=click.IntRange(min=1), default=3, show_default=True,
              help="Groups 1..N of every class form the test set (split 1).")
@click.option("--frames", type=click.IntRange(min=8), default=16, show_default=True)
@click.option("--size", default="96x72", show_default=True, callback=_size,
              help="Frame size WIDTHxHEIGHT (even numbers).")
@click.option("--fps", type=click.FloatRange(min=1), default=12.0, show_default=True)
@click.option("--object-speed", default="1.2,1.8", show_default=True, callback=_range,
              help="Object speed relative to the background, px/frame (LOW,HIGH).")
@click.option("--pan-speed", default="0.3,1.0", show_default=True, callback=_range,
              help="Camera pan speed, px/frame, random direction (LOW,HIGH).")
@click.option("--codec", type=click.Choice(["mpeg4", "ffv1", "libx264", "mjpeg", "png"]),
              default="mpeg4", show_default=True, help="Video codec (mpeg4 .avi like UCF101).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              callback=cap_workers)
@click.option("--overwrite", is_flag=True, help="Rewrite a dataset made with other settings.")
def make_demo_data(out, num_classes, groups, clips_per_group, test_groups, frames, size, fps,
                   object_speed, pan_speed, codec, seed, workers, overwrite):
    """Generate the demo dataset in OUT: videos/<Class>/*.avi, splits/ (UCF101 format), motion.json.

    The class is the direction an object moves relative to a textured background while the
    camera pans at random, so RGB frames alone are near chance, flow is good and warped flow
    (camera motion removed) is best. Rerunning with the same settings does nothing.
    """
    from ..demo import DemoConfig, make_demo_dataset

    with bad_settings():
        cfg = DemoConfig(num_classes=num_classes, groups=groups, clips_per_group=clips_per_group,
                         test_groups=test_groups, frames=frames, width=size[0], height=size[1],
                         fps=fps, object_speed=object_speed, pan_speed=pan_speed, codec=codec,
                         seed=seed)
    with fails_with(FileExistsError):
        summary = make_demo_dataset(out, cfg, workers=workers, overwrite=overwrite)
    click.echo(json.dumps(summary, sort_keys=True))
