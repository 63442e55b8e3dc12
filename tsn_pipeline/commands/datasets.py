"""`tsn make-list`: dataset split files -> the video list CSV every stage reads."""
from __future__ import annotations

import json

import click

from .options import fails_with


@click.command("make-list")
@click.argument("dataset", type=click.Choice(["ucf101", "hmdb51", "generic"]))
@click.argument("data", type=click.Path(exists=True))
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False),
              help="CSV to write (video_id,path,label,class_name,split); video paths are "
                   "written relative to the CSV's folder.")
@click.option("--split", type=click.IntRange(1, 3), default=1, show_default=True,
              help="Official split (ucf101, hmdb51).")
@click.option("--splits", "splits_dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="Folder of the split files [default: found in DATA: ucfTrainTestlist/, "
                   "testTrainMulti_7030_splits/, or DATA itself].")
@click.option("--videos", "videos_dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="Folder the listed videos are in [default: found in DATA: UCF-101/, videos/, "
                   "or DATA itself; class sub-folders or flat].")
@click.option("--classes", "classes_file", type=click.Path(dir_okay=False, exists=True),
              default=None, help="generic: class order (one name a line, or a classInd.txt).")
@click.option("--include-unused", is_flag=True,
              help="hmdb51: keep the videos a split marks 0 (split 'unused').")
@click.option("--check-files/--no-check-files", default=True, show_default=True,
              help="Fail when a listed video file does not exist.")
def make_list(dataset, data, out_file, split, splits_dir, videos_dir, classes_file,
              include_unused, check_files):
    """Write the video list of DATASET found at DATA (one row per video, sorted by id).

    \b
    ucf101   DATA holds classInd.txt, trainlist0K.txt, testlist0K.txt and the videos
    hmdb51   DATA holds <class>_test_splitK.txt files and the videos
    generic  DATA is a CSV (path,label[,split], header optional) or class folders
             (<class>/<video>, or train|val|test/<class>/<video>)

    Unknown classes, missing files and duplicate ids (ids are file stems) are errors.
    Prints a JSON summary (videos per split, classes).
    """
    from ..datasets import make_list as build, split_counts
    from ..videolist import VideoListError, write_video_list_csv

    with fails_with(VideoListError):
        videos = build(dataset, data, split=split, splits_dir=splits_dir, videos_dir=videos_dir,
                       classes_file=classes_file, include_unused=include_unused,
                       check_files=check_files)
    try:
        write_video_list_csv(videos.items, out_file)
    except OSError as exc:
        raise click.ClickException(f"cannot write {out_file}: {exc.strerror or exc}") from exc
    click.echo(json.dumps({"dataset": dataset, "split": split if dataset != "generic" else None,
                           "list": out_file, "videos": len(videos),
                           "classes": len(videos.classes), "splits": split_counts(videos)},
                          sort_keys=True))
