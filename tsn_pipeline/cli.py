"""The ``tsn`` command line: one click group, one subcommand per stage (the ``tsn`` console
script; ``cli.py`` at the repository root runs the same group from a checkout).

Each stage's command lives in ``tsn_pipeline/commands/<module>.py``; this file only wires them.
``--config FILE.toml`` supplies option defaults per command (``[decode]``, ``[flow]``,
``[train]`` ...), so the make targets in ``pipelines/`` stay one line; options given on the
command line win. A section or key that names no command or option is an error (exit 2).
Every option can also be set as ``TSN_<COMMAND>_<OPTION>``.
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
    loose = sorted(k for k, v in data.items() if not isinstance(v, dict))
    if loose:
        raise click.BadParameter(f"{path}: keys {loose} are outside a [command] section; put "
                                 "each under the command it sets (e.g. [decode])",
                                 param_hint="--config")
    unknown = sorted(k for k in data if k not in COMMANDS)
    if unknown:
        raise click.BadParameter(f"{path}: sections {unknown} name no command "
                                 f"(commands: {sorted(COMMANDS)})", param_hint="--config")
    for section, table in data.items():
        _check_keys(path, section, section, table)
    return data


def _check_keys(path: str, command: str, section: str, table: dict) -> None:
    """Every key of ``[section]`` must be an option of that command (click would ignore it);
    ``[train.<modality>]`` tables hold train options for one modality."""
    from tsn_pipeline.commands.train import MODALITIES

    params = main.get_command(None, command).params
    names = sorted(p.name for p in params)
    # an option's own name works too ([decode] out = ... for --out, stored as out_dir)
    aliases = {o.lstrip("-").replace("-", "_"): p.name for p in params
               for o in getattr(p, "opts", []) if o.startswith("--")}
    for key in [k for k, v in table.items()
                if k not in names and aliases.get(k) in names and not isinstance(v, dict)]:
        table[aliases[key]] = table.pop(key)
    for key, value in table.items():
        if isinstance(value, dict) and section == "train" and key in MODALITIES:
            _check_keys(path, command, f"train.{key}", value)
            continue
        if key not in names:
            hint = f"; write {key.replace('-', '_')!r}" if "-" in key else ""
            raise click.BadParameter(f"{path}: [{section}] key {key!r} is not an option of "
                                     f"tsn {command}{hint} (options: "
                                     f"{', '.join(names)})", param_hint="--config")


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
