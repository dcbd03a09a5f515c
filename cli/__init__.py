"""``mailroom``: the command line for operators and campaign owners (typer + rich) over the REST API."""
