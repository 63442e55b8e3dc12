"""Click commands, one module per stage; ``cli.py`` registers them. Heavy imports stay inside
the command functions so that ``tsn --help`` is instant."""
