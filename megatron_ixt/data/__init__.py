"""IXT data: the IXT options (``options``), prefix kinds (``prefix_kinds``, ``templates``), shard sets
(``shards``), blends (``blends``) and the IXT-aware GPT dataset (``dataset``, ``provider``).

``from megatron_ixt.data import IXTGPTDataset, IXTGPTDatasetConfig, ...`` works; the names are
loaded on first use so that ``megatron_ixt.data.record`` / ``.options`` / ``.blends`` /
``.prefix_kinds`` / ``.shards`` / ``.templates`` import without pulling in torch and megatron-core's
dataset stack.
"""
import importlib

_EXPORTS = {
    "IXTOptions": "options",
    "NO_PREFIX": "options",
    "PREFIX_LOSS_CHOICES": "options",
    "prefix_kind_choices": "options",
    "add_ixt_dataset_args": "options",
    "blends_from_args": "blends",
    "IXTGPTDataset": "dataset",
    "IXTGPTDatasetConfig": "dataset",
    "build_train_valid_test_datasets": "provider",
    "conditioning_configs": "provider",
    "config_paths": "provider",
    "dataset_config_from_args": "provider",
    "steering_prefix": "provider",
    "train_valid_test_datasets_provider": "provider",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
