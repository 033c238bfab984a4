"""Command-line tools: preprocess_ixt, merge_ixt, inspect_ixt.

Run as ``python tools/<name>.py`` or ``python -m tools.<name>``; see docs/preprocess.md.
"""
