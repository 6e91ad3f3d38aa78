"""The backbone in PyTorch, the library's lowest floor: a layer's identity (``BackboneSpec``),
the stream that makes any block of ``W_seed`` from it (bit-exact with the Triton generators;
definition: docs/backbone.md), and the identity's forms outside the process (the stream a
layer's name gives it, a fingerprint of the values).

    spec        BackboneSpec
    philox      Philox4x32 on int64 tensors, shared by both versions
    stream_v1   version 1: one 32-bit word per weight (gaussian, uniform, rademacher)
    stream_v2   version 2: one bit per weight, laid out for the tensor cores
    blocks      backbone_block, backbone_signs: any block, validated, by version
    identity    stream_for_name, backbone_fingerprint
"""

from .blocks import BackboneBlock, backbone_block, backbone_signs
from .identity import backbone_fingerprint, stream_for_name
from .philox import philox4x32
from .spec import BackboneSpec

__all__ = ["BackboneBlock", "BackboneSpec", "backbone_block", "backbone_fingerprint", "backbone_signs", "philox4x32",
           "stream_for_name"]
