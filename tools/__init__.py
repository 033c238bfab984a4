"""Command-line tools: preprocess_ixt, merge_ixt, inspect_ixt, inspect_samples, convert_to_hf.

From a checkout run ``python tools/<name>.py`` or ``python -m tools.<name>``; installed, this folder
is the ``megatron_ixt_tools`` package (setup.py ``package_dir``) behind the ``ixt-preprocess``,
``ixt-merge``, ``ixt-inspect``, ``ixt-inspect-samples`` and ``ixt-convert-to-hf`` console scripts. Modules here import
only ``megatron_ixt`` (never ``tools.``), so both names work. See docs/preprocess.md.
"""
