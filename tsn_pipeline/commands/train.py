"""`tsn train`: train one TSN stream from frame/flow shards (see tsn_pipeline.train).

Per-modality defaults may come from the ``--config`` TOML: ``[train]`` sets defaults for
every modality, ``[train.rgb]`` / ``[train.flow]`` / ``[train.warped]`` / ``[train.rgbdiff]``
override them for one modality (options given on the command line always win).
"""
from __future__ import annotations

import json
import os

import click

from .options import amp_option, bad_settings, cap_workers, device_option

from ..modalities import NAMES as MODALITIES


def _parse_steps(ctx, param, value):
    if value is None or value == "" or isinstance(value, (list, tuple)):
        return tuple(value) if value else None
    try:
        steps = tuple(int(v) for v in str(value).replace(" ", "").split(",") if v)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers "
                                 "(e.g. 1500 or 20,40)") from None
    return steps


def _real(path):
    """Input paths as their real location: a run resumed from another folder (or through a
    link) names the same data the same way, and different data differently."""
    return os.path.realpath(path) if path else path


def _modality_overrides(ctx, modality: str, params: dict) -> dict:
    """Apply ``[train.<modality>]`` from the config file to options left at their default."""
    from click.core import ParameterSource

    table = (ctx.default_map or {}).get(modality)
    if not isinstance(table, dict):
        return params
    out = dict(params)     # cli.load_config checked that every key is an option
    for key, value in table.items():
        if ctx.get_parameter_source(key) in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP):
            param = next(p for p in ctx.command.params if p.name == key)
            out[key] = param.process_value(ctx, value)
    return out


@click.command()
@click.option("--frames", "frames_dir", type=click.Path(exists=True),
              help="Frame shards (folder or file) from `tsn decode`; needed for rgb/rgbdiff.")
@click.option("--flow", "flow_dir", type=click.Path(exists=True),
              help="Flow shards (folder or file) from `tsn flow`; needed for flow/warped.")
@click.option("--list", "list_file", type=click.Path(exists=True),
              help="List CSV (video_id,path,label,class_name,split) selecting videos and "
                   "labels [default: the shards' own label/split attributes].")
@click.option("--split", default="train", show_default=True,
              help="Train on the videos of this split ('' for all).")
@click.option("--val-split", default=None,
              help="Validate each epoch on this split (e.g. test); keeps best.pt.")
@click.option("--modality", type=click.Choice(MODALITIES), default="rgb", show_default=True)
@click.option("--arch", type=click.Choice(["resnet10", "resnet18", "resnet34", "resnet50",
                                           "resnet101", "bninception"]),
              default="resnet50", show_default=True, help="Backbone.")
@click.option("--pretrained", type=click.Path(dir_okay=False),
              help="Local ImageNet weights (torchvision-format state dict); never downloaded.")
@click.option("--cross-modality/--no-cross-modality", default=True, show_default=True,
              help="Adapt 3-channel ImageNet first-conv weights to flow/rgbdiff input.")
@click.option("--num-classes", type=click.IntRange(min=1), default=None,
              help="[default: the list's or shards' classes]")
@click.option("--num-segments", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--new-length", type=click.IntRange(min=1), default=None,
              help="Frames/fields per snippet [default: 1 rgb, 5 otherwise].")
@click.option("--consensus", type=click.Choice(["avg", "max"]), default="avg", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Train for this many epochs (else --iterations).")
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help="Train for this many steps [default: TSN recipe, 3500 rgb / 18000 flow].")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Global batch (clips), split over torchrun processes.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Base learning rate [default: 0.001 rgb/rgbdiff, 0.005 flow/warped].")
@click.option("--lr-steps", callback=_parse_steps, default=None,
              help="Multiply lr by --lr-gamma at these epochs/iterations, comma-separated "
                   "[default: TSN recipe, scaled to --epochs].")
@click.option("--lr-gamma", type=float, default=0.1, show_default=True)
@click.option("--momentum", type=float, default=0.9, show_default=True)
@click.option("--weight-decay", type=float, default=5e-4, show_default=True)
@click.option("--clip-grad", type=click.FloatRange(min=0), default=None,
              help="Max gradient norm, 0 = off [default: 40 rgb, 20 flow].")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Dropout before the classifier [default: 0.8 rgb, 0.7 flow].")
@click.option("--partial-bn/--no-partial-bn", default=True, show_default=True,
              help="Freeze every BatchNorm after the first.")
@click.option("--freeze-bn", is_flag=True, help="Freeze every BatchNorm, the first too.")
@click.option("--input-size", type=click.IntRange(min=32), default=224, show_default=True)
@click.option("--flip/--no-flip", default=True, show_default=True,
              help="Random horizontal flips (TSN). --no-flip for classes a mirror image turns "
                   "into each other (left/right); recorded, so `tsn score` then tests "
                   "without flipped crops.")
@device_option
@amp_option
@click.option("--channels-last", is_flag=True, help="NHWC memory format (faster on GPUs).")
@click.option("--sync-bn", is_flag=True, help="SyncBatchNorm across torchrun processes (CUDA).")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              callback=cap_workers,
              help="DataLoader worker processes (per training process, at most the cores).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch intra-op threads per process [default: torch's choice]; 1 is "
                   "often fastest for small models on a busy CPU.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoint.pt, best.pt, metrics.jsonl, metrics.png.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from checkpoint.pt.")
@click.option("--overwrite", is_flag=True, help="Start again even if --out holds a run.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--deterministic", is_flag=True,
              help="Deterministic algorithms only (bitwise-repeatable runs on CPU).")
@click.option("--val-every", type=click.IntRange(min=1), default=1, show_default=True,
              help="Validate every N epochs.")
@click.pass_context
def train(ctx, **params):
    """Train a TSN stream (rgb, flow, warped, rgbdiff) from HDF5 shards.

    Single process by default; launched by torchrun it trains data-parallel (NCCL on CUDA,
    gloo on CPU), e.g. `torchrun --nproc_per_node 4 $(which tsn) train ...`. Prints one line
    per epoch on stderr and a JSON summary on stdout.
    """
    params = _modality_overrides(ctx, params["modality"], params)
    import logging

    from ..data import DataError
    from ..store import StoreError
    from ..train import TrainConfig, TrainError, cleanup_distributed, run_training

    p = params
    with bad_settings():
        cfg = TrainConfig(
            modality=p["modality"], frames=_real(p["frames_dir"]), flow=_real(p["flow_dir"]),
            list_file=_real(p["list_file"]), split=p["split"] or None,
            val_split=p["val_split"] or None,
            num_classes=p["num_classes"], epochs=p["epochs"], iterations=p["iterations"],
            batch_size=p["batch_size"], lr=p["lr"], lr_steps=p["lr_steps"],
            lr_gamma=p["lr_gamma"], momentum=p["momentum"], weight_decay=p["weight_decay"],
            clip_grad=p["clip_grad"], amp=p["amp"], sync_bn=p["sync_bn"], workers=p["workers"],
            threads=p["threads"], device=p["device"], seed=p["seed"],
            deterministic=p["deterministic"], val_every=p["val_every"], flip=p["flip"])
        model_kwargs = dict(
            arch=p["arch"], num_segments=p["num_segments"], new_length=p["new_length"],
            consensus=p["consensus"], dropout=p["dropout"], partial_bn=p["partial_bn"],
            freeze_bn=p["freeze_bn"], pretrained=p["pretrained"],
            cross_modality_init=p["cross_modality"], input_size=p["input_size"],
            channels_last=p["channels_last"])
        from ..model import ModelConfig

        # num_classes: the data's when not given (run_training fills it in)
        mcfg = ModelConfig(modality=p["modality"], num_classes=p["num_classes"] or 1,
                           **model_kwargs)

    def progress(row):
        if "start" in row:
            r = row["start"]
            many = r["world_size"] > 1
            where = (f"{r['device'].split(':')[0]} x {r['world_size']} processes" if many
                     else r["device"])
            msg = (f"training {r['arch']} ({r['modality']}) on {where}: "
                   f"{r['train_videos']} training videos"
                   f"{', %d for validation' % r['val_videos'] if r['val_videos'] else ''}; "
                   f"{r['steps']} step{'s' if r['steps'] != 1 else ''} "
                   f"({r['steps_per_epoch']} per epoch) of {'global ' if many else ''}batch "
                   f"{r['batch_size']}")
            if r["from_step"]:
                msg += f", resuming after step {r['from_step']}"
            click.echo(msg, err=True)
            return
        msg = (f"epoch {row['epoch']} step {row['step']}: loss {row['loss']:.4f} "
               f"top1 {row['top1']:.3f} lr {row['lr']:.2e} {row['clips_per_s']:.1f} clips/s")
        if "val_top1" in row:
            msg += f" | val loss {row['val_loss']:.4f} top1 {row['val_top1']:.3f}"
        click.echo(msg, err=True)

    log = logging.getLogger("tsn_pipeline.train")
    try:
        summary = run_training(cfg, mcfg, p["out_dir"], resume=p["resume"],
                               overwrite=p["overwrite"], progress=progress)
    except (TrainError, DataError, StoreError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:      # e.g. the disk filled up while writing a checkpoint
        log.debug("training failed", exc_info=True)
        raise click.ClickException(f"cannot write {exc.filename or p['out_dir']}: "
                                   f"{exc.strerror or exc}") from exc
    except ValueError as exc:   # e.g. pretrained weights that do not fit the backbone
        log.debug("training failed", exc_info=True)
        raise click.ClickException(str(exc)) from exc
    finally:
        cleanup_distributed()
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(json.dumps(summary, sort_keys=True))
