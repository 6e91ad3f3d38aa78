"""Model tools: turning a model into a seeded one and back, and what one holds.

    convert          nn.Linear (and GPT-2's Conv1D) -> lottalora.Linear, by PEFT's name rules
    adapters         named adapters over the same backbones: add, set, delete, disable, mixed batches
    pretrained_class the class a converted transformers model gets (lottalora's save_pretrained)
    patterns         the name rules (target_modules, rank_pattern, "all-linear", layers_to_transform, ...)
    modules          which modules are dense linear layers, ties, replacing a submodule
    records          the record of convert calls a model carries (saved, replayed)
    load_check       a converted model's load_state_dict is all or nothing
    materialize      allocate what a meta-built model still lacks
    redundant_betas  betas that only act as a product with another's, proved on the fx graph
    merge            merge_and_unload: seeded layers folded back into dense ones
    scaffold         reseed and ScaffoldSchedule: re-drawn backbones
    summary          ModelSummary of a live model
"""

from .adapters import add_adapter, delete_adapter, disable_adapter, list_adapters, mixed_batch, set_adapter
from .convert import convert
from .materialize import materialize
from .merge import merge_and_unload, merged_weight
from .scaffold import ScaffoldSchedule, reseed
from .summary import ModelSummary, summarize_model

__all__ = ["ModelSummary", "ScaffoldSchedule", "add_adapter", "convert", "delete_adapter", "disable_adapter",
           "list_adapters", "materialize", "merge_and_unload", "merged_weight", "mixed_batch", "reseed", "set_adapter",
           "summarize_model"]
