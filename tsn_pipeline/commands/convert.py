"""`tsn convert`: downloaded tsn-pytorch / mmaction2 weights -> this project's files, offline."""
from __future__ import annotations

import json
from pathlib import Path

import click

from .train import MODALITIES


@click.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--num-segments", type=click.IntRange(min=1), default=None,
              help="Segments the model was trained with (not recorded by tsn-pytorch or "
                   "mmaction2 checkpoints; their default is 3). Needed for trained models.")
@click.option("--modality", type=click.Choice(MODALITIES), default=None,
              help="When the first conv does not tell (3 channels: rgb, 10: flow, 15: rgbdiff "
                   "are inferred); also 'warped' for a flow model trained on warped flow.")
@click.option("--new-length", type=click.IntRange(min=1), default=None,
              help="Frames or flow fields per snippet; checked against the first conv.")
@click.option("--num-classes", type=click.IntRange(min=1), default=None,
              help="Checked against the classifier (which decides).")
@click.option("--input-size", type=click.IntRange(min=32), default=224, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def convert(source, out, num_segments, modality, new_length, num_classes, input_size, overwrite):
    """Convert SOURCE (a downloaded .pth) into OUT, recognising its layout by its keys.

    \b
    tsn-pytorch's ImageNet BN-Inception (bn_inception-*.pth) -> a --pretrained file:
      tsn convert bn_inception-9f5701afb96c8044.pth bninception.pth
      tsn train --arch bninception --pretrained bninception.pth ...
    a tsn-pytorch checkpoint (RGB / Flow / RGBDiff; ResNet or BNInception) or an mmaction2
    TSN (ResNet) -> a checkpoint for tsn score / tsn features:
      tsn convert ucf101_bninception_flow_checkpoint.pth.tar flow.pt --num-segments 3
      tsn score flow.pt --flow out/flow --out out/scores-flow

    Unknown, missing or mis-shaped keys are an error listing them. Prints a JSON summary.
    """
    from ..convert import ConvertError, Options, convert_file

    if Path(out).exists() and not overwrite:
        raise click.ClickException(f"{out} exists; pass --overwrite to replace it")
    opts = Options(num_segments=num_segments, modality=modality, new_length=new_length,
                   num_classes=num_classes, input_size=input_size)
    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        summary = convert_file(source, Path(out), opts)
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or out}: {exc.strerror or exc}") from exc
    except (ConvertError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(summary, sort_keys=True))
