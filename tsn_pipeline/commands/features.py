"""`tsn features` (being written)."""
import click


@click.command()
def features():
    """(being written)"""
    raise click.ClickException("tsn features is not finished yet")
