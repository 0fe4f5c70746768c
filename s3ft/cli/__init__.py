"""The `s3ft` command: argument parsing and the console tables it prints."""

from s3ft.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
