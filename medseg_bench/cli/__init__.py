"""The `medseg-bench` command line: one module per command, added to one Typer app in `app.py`."""
