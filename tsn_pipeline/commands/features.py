"""`tsn features`: checkpoint + frame/flow shards -> snippet feature shards (tsn_pipeline.features)."""
from __future__ import annotations

import click

from ..modalities import NAMES as MODALITIES

from .options import (bad_settings, fails_with, run_options, run_shards, select_shards,
                      shard_options, stage_errors)
from .score import input_options, open_inputs


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False), required=False)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for features-<i>-of-<n>.h5 shards.")
@click.option("--stride", type=click.IntRange(min=1), default=None,
              help="One snippet every STRIDE frames (flow fields), from 0 [default: 16 unless "
                   "--num-snippets is given].")
@click.option("--num-snippets", type=click.IntRange(min=1), default=None,
              help="Instead of --stride: this many evenly spaced snippets per video.")
@click.option("--crops", type=click.Choice(["1", "3", "5", "10"]), default="1", show_default=True,
              help="Crops per snippet (their features are averaged): 1 = centre crop, 5 = 4 "
                   "corners + centre, 10 = those and their mirror images.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32",
              show_default=True, help="Stored feature dtype (float16 halves the files).")
@click.option("--arch", default=None,
              help="Without CHECKPOINT: backbone of an ImageNet-initialised model "
                   "(resnet18/34/50/101, bninception, ...), with --pretrained.")
@click.option("--pretrained", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Without CHECKPOINT: torchvision-format state dict of --arch.")
@click.option("--modality", type=click.Choice(MODALITIES),
              default=None, help="Without CHECKPOINT: input modality [default: rgb] (flow uses "
                                 "TSN's cross-modality initialisation of the first conv).")
@click.option("--new-length", type=click.IntRange(min=1), default=None,
              help="Without CHECKPOINT: frames/fields per snippet [default: 1 rgb, 5 otherwise].")
@click.option("--input-size", type=click.IntRange(min=32), default=None,
              help="Without CHECKPOINT: crop size [default: 224].")
@input_options
@shard_options
@run_options
@stage_errors
def features(checkpoint, out_dir, stride, num_snippets, crops, scale_size, dtype,
             arch, pretrained, modality, new_length, input_size, frames_dir, flow_dir, split,
             list_file, batch_size, device, amp,
             shard_index, num_shards, workers, overwrite, retry_failed, progress):
    """Extract snippet features (pooled backbone output, before dropout and classifier).

    \b
    tsn features runs/rgb/checkpoint.pt --frames out/frames --out out/features-rgb --stride 16
    tsn features runs/flow/checkpoint.pt --flow out/flow --out out/features-flow --num-snippets 100
    tsn features --arch resnet50 --pretrained r50.pth --frames out/frames --out out/feat-in1k

    CHECKPOINT is a `tsn train` checkpoint; without it, --arch and --pretrained give an
    ImageNet-initialised backbone (no TSN training).

    Per video: features (snippets, dim) and frame_indices (snippets,), the 0-based first
    frame (flow: first field) of each snippet. Prints one JSON summary line per shard; exits 1
    if any video failed (reasons in <out>/features-<i>-of-<n>.failures.json).
    """
    from ..data import DataError
    from ..features import FeaturesConfig, run_features

    if stride is not None and num_snippets is not None:
        raise click.BadParameter("give --stride or --num-snippets, not both",
                                 param_hint="--stride/--num-snippets")
    if stride is None and num_snippets is None:
        stride = 16
    model_config = None
    free = {"--arch": arch, "--pretrained": pretrained, "--modality": modality,
            "--new-length": new_length, "--input-size": input_size}
    if checkpoint is not None:
        given = [k for k, v in free.items() if v is not None]
        if given:
            raise click.BadParameter(f"{', '.join(given)} describe a model without a "
                                     "checkpoint; the checkpoint already says all that",
                                     param_hint="CHECKPOINT")
    else:
        if not arch or not pretrained:
            raise click.UsageError("give a CHECKPOINT (from tsn train), or --arch and "
                                   "--pretrained for an ImageNet-initialised backbone")
        from ..model import ModelConfig

        with bad_settings():
            model_config = ModelConfig(arch=arch, modality=modality or "rgb", num_classes=1,
                                       new_length=new_length, pretrained=pretrained,
                                       input_size=input_size or 224)
    indices, count = select_shards(shard_index, num_shards)
    with bad_settings():
        cfg = FeaturesConfig(stride=stride, num_snippets=num_snippets, crops=int(crops),
                             scale_size=scale_size, dtype=dtype, amp=amp)
    sources, videos = open_inputs(frames_dir, flow_dir, list_file)
    with fails_with(DataError, ValueError, FileNotFoundError):
        run_shards(indices, lambda index: run_features(
            checkpoint, sources, out_dir, cfg, index, count, split, videos, batch_size, device,
            workers, overwrite, retry_failed, progress, model_config=model_config))
