"""`tsn score` (being written)."""
import click


@click.command()
def score():
    """(being written)"""
    raise click.ClickException("tsn score is not finished yet")
