"""The `tsn` command line from a checkout: ``python cli.py ...`` or ``python -m cli ...``.

The click group lives in ``tsn_pipeline/cli.py``, where the installed ``tsn`` console script
points, so nothing generic named ``cli`` is installed into site-packages.
"""
from tsn_pipeline.cli import main

if __name__ == "__main__":
    main()
