"""Typer command functions, registered by capalign.cli."""
