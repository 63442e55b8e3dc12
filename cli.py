"""The ``tsn`` command line: one click group, one subcommand per stage.

Each stage's command lives in ``tsn_pipeline/commands/<module>.py``; this file only wires them.
``--config FILE.toml`` supplies option defaults per command (``[decode]``, ``[flow]``,
``[train]`` ...), so the make targets in ``pipelines/`` stay one line; options given on the
command line win. Every option can also be set as ``TSN_<COMMAND>_<OPTION>``.
"""
from __future__ import annotations

import importlib

import click

# command name -> (module under tsn_pipeline.commands, attribute)
COMMANDS = {
    "decode": ("decode", "decode"),
    "flow": ("flow", "flow"),
    "train": ("train", "train"),
    "info": ("inspect", "info"),
    "verify": ("inspect", "verify"),
    "score": ("score", "score"),
    "fuse": ("fuse", "fuse"),
    "features": ("features", "features"),
    "convert": ("convert", "convert"),
    "make-list": ("datasets", "make_list"),
    "index": ("index", "index"),
    "import-rawframes": ("rawframes", "import_rawframes"),
    "export-rawframes": ("rawframes", "export_rawframes"),
    "make-demo-data": ("demo", "make_demo_data"),
}


class LazyGroup(click.Group):
    """Imports a command's module only when that command is listed or run."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name]
        return getattr(importlib.import_module(f"tsn_pipeline.commands.{module}"), attr)


def load_config(path: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--config") from exc
    unknown = sorted(k for k, v in data.items() if isinstance(v, dict) and k not in COMMANDS
                     and k != "dataset")
    if unknown:
        raise click.BadParameter(f"{path}: sections {unknown} name no command "
                                 f"(commands: {sorted(COMMANDS)})", param_hint="--config")
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def _version():
    from tsn_pipeline import __version__
    return __version__


@click.group(cls=LazyGroup, context_settings={"auto_envvar_prefix": "TSN",
                                              "help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
              envvar="TSN_CONFIG", help="TOML file with option defaults per command.")
@click.option("-v", "--verbose", count=True, help="More log messages (-vv for debug).")
@click.version_option(package_name="tsn-pipeline")
@click.pass_context
def main(ctx, config_file, verbose):
    """tsn-pipeline: videos -> frames -> TV-L1 flow -> TSN streams -> scores -> fusion.

    Every stage reads and writes HDF5 shards keyed by video id; see README.md.
    """
    from tsn_pipeline.commands.options import setup_logging

    setup_logging(verbose)
    if config_file:
        ctx.default_map = load_config(config_file)
        ctx.meta["config_file"] = config_file


if __name__ == "__main__":
    main()
