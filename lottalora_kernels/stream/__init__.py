"""The backbone stream in Triton: its constants (``spec``), Philox4x32 (``philox``) and one tile
generator per stream version (``v1``, ``v2``), shared by every kernel that makes W_seed.

The definition is docs/backbone.md; the PyTorch twins live in ``lottalora.backbone`` and tests
hold each pair bit-equal. ``spec`` imports neither Triton nor torch.
"""
