"""The `imagesynth` command line (typer); thin: parsing and printing only."""
