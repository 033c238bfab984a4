"""Command-line tools: preprocess_ixt, merge_ixt, inspect_ixt, inspect_samples.

From a checkout run ``python tools/<name>.py`` or ``python -m tools.<name>``; installed, this folder
is the ``megatron_ixt_tools`` package (setup.py ``package_dir``) behind the ``ixt-preprocess``,
``ixt-merge``, ``ixt-inspect`` and ``ixt-inspect-samples`` console scripts. Modules here import
only ``megatron_ixt`` (never ``tools.``), so both names work. See docs/preprocess.md.
"""
