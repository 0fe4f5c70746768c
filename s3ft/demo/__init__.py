"""The CPU demo: `python -m s3ft.demo` (see __main__.py and the README)."""
