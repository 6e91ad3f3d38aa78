"""Seed-only checkpoints: a model saved as seeds + adapters, never its backbone weights.

    format        the files' names, versions and limits; ``fail`` for every refusal
    config_json   strict JSON and the config's checksum
    schema        every key and value of the config, checked
    files         atomic writes, and reads checked against the recorded sizes and SHA-256
    model_state   the model's tensors and trainable names under plain names
    saving        lottalora.save
    loading       lottalora.load (all or nothing)
    contents      describe and summary: what a directory holds, from its files alone
    model_config  the config.json of a transformers model (architecture, convert calls)
    pretrained    from_pretrained: the model rebuilt from its directory alone
    save_pretrained  a converted transformers model's save_pretrained (and the Trainer's files)
    transformers_hook  registering "lottalora" with transformers' Auto classes when they are imported
    transformers_auto  the config and loader classes registered there (imports transformers)

The format is documented in docs/checkpoint.md.
"""

from .contents import describe, summary
from .files import read_config
from .loading import load
from .pretrained import from_pretrained
from .save_pretrained import install_save_pretrained
from .saving import save

install_save_pretrained()  # the writer of converted transformers models' save_pretrained

__all__ = ["describe", "from_pretrained", "load", "read_config", "save", "summary"]
