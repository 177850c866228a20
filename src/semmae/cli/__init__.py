"""The ``semmae`` command line: thin commands that load a config and call one ``run_*`` function."""
