"""Triton kernels of lottalora: the backbone stream and the seeded matmul's regimes.

    stream/         the stream's constants (spec), Philox4x32, one tile generator per version
    seeded_linear/  the seeded matmul: one file per regime (decode, two_phase, one_pass_v1),
                    the shared epilogue, and the dispatch that picks a regime per call
    backbone_gen    W_seed (or a block of it) generated into memory
    launch          compiled kernels relaunched without Triton's per-call Python
    runtime, gluon, dtypes, allocation   what the launchers share
    tools/          a fake CUDA driver and SASS counting: kernel work without a GPU

Never imports ``lottalora``; nothing here touches a GPU at import time, and ``stream.spec`` and
``allocation`` import no Triton, so ``lottalora`` can read them on machines without it.
"""
