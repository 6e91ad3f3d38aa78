"""Stream version 2 in Triton: the element functions every v2 kernel calls (Triton and Gluon).

The definition is ``docs/backbone.md``; ``lottalora.backbone.stream_v2`` is the PyTorch twin and tests
hold the two bit-equal. For the weight at (o, i), write o = 64 O + 8 p + a and
i = 128 I + 8 q + c: its sign is bit 16 p + q of the Philox4x32-10 call with counter
(64 I + 8 a + c, O, stream_lo, stream_hi) and key (seed_lo, seed_hi); bit 0 means +1.

These are plain ``@triton.jit`` functions of index tensors, so a Gluon kernel calls them with
its own layouts and the interpreter runs them in the plain-Triton twins: the stream is written
once. Two ways to turn bits into values:

- ``v2_signs``: one weight per element, plain Triton (the twins, the interpreter);
- ``v2_sign_pairs``: the fast path. A 16-bit operand register holds two neighbouring weights
  whose bits sit at the same position of two calls (neighbouring columns in the forward,
  neighbouring rows in the input gradient); the two words are merged so that both bits sit 16
  apart, then one shift and one LOP3 make both bf16/fp16 values (``inline_asm_elementwise``,
  pack=2: elements 2k and 2k+1 of a thread, which for a kWidth=2 dot operand are the two halves
  of one operand register). Inline PTX cannot run in the interpreter: the GPU tests hold it
  bit-equal to ``v2_signs``.

Nothing here depends on the program id or the tile: every kernel, direction and tile shape
regenerates the same bits for a given (o, i).
"""

import triton
import triton.language as tl

from .philox import PHILOX_ROUNDS, philox4x32


@triton.jit
def v2_call_at(seed_lo, seed_hi, stream_lo, stream_hi, span_o, a, span_i, c, N_ROUNDS: tl.constexpr = PHILOX_ROUNDS):
    """The four words of the call that serves the weights with o = 64 span_o + 8 p + a and
    i = 128 span_i + 8 q + c, for every p and q (tensors that broadcast together). Kernels that
    consume a call's bits in several steps (the one-pass kernels: a span in column chunks) make
    the call once and pick from it with ``v2_pick``."""
    c0 = (span_i * 64 + a * 8 + c).to(tl.uint32)
    c1 = span_o.to(tl.uint32) + c0 * 0  # broadcast to the tile's shape
    c0 = c0 + c1 * 0
    c2 = c0 * 0 + tl.cast(stream_lo, tl.uint32, bitcast=True)
    c3 = c0 * 0 + tl.cast(stream_hi, tl.uint32, bitcast=True)
    return philox4x32(tl.cast(seed_lo, tl.uint32, bitcast=True), tl.cast(seed_hi, tl.uint32, bitcast=True),
                      c0, c1, c2, c3, N_ROUNDS)


@triton.jit
def v2_pick(w0, w1, w2, w3, p, q):
    """The word of a call (w0..w3) that holds the bit of the weight at block offsets (p, q), and
    the bit's position in it: bit n = 16 p + q of the call's 128 bits."""
    bit = (p * 16 + q + w0 * 0).to(tl.uint32)  # n = 16 p + q, in [0, 128)
    word_index = bit >> 5
    word = tl.where(word_index == 0, w0, tl.where(word_index == 1, w1, tl.where(word_index == 2, w2, w3)))
    return word, bit & 31


@triton.jit
def v2_pick_word(w0, w1, w2, w3, WORD: tl.constexpr, p, q):
    """v2_pick for weights whose word, (16 p + q) div 32 = p div 2, a kernel knows from its
    layout to be WORD for every element (the input gradient's row chunks of W^T): no select."""
    if WORD == 0:
        word = w0
    elif WORD == 1:
        word = w1
    elif WORD == 2:
        word = w2
    else:
        word = w3
    return word, ((p * 16 + q) & 31).to(tl.uint32) + (w0 * 0)


@triton.jit
def v2_words_at(seed_lo, seed_hi, stream_lo, stream_hi, span_o, p, a, span_i, q, c,
                N_ROUNDS: tl.constexpr = PHILOX_ROUNDS):
    """v2_words with the coordinates already split: o = 64 span_o + 8 p + a, i = 128 span_i + 8 q
    + c (tensors that broadcast together). Kernels that know the split from their layout call
    this directly, so the compiler sees, for instance, that a warp's rows share span_o.
    N_ROUNDS other than the stream's 10 is for instruction-count probes only."""
    w0, w1, w2, w3 = v2_call_at(seed_lo, seed_hi, stream_lo, stream_hi, span_o, a, span_i, c, N_ROUNDS)
    return v2_pick(w0, w1, w2, w3, p, q)


@triton.jit
def v2_words(seed_lo, seed_hi, stream_lo, stream_hi, offs_o, offs_i):
    """For W[o, i] (o, i broadcast against each other): the word of its call that holds its
    bit, and the bit's position in that word, as uint32 tensors. seed_*/stream_*: int32 halves
    of the 64-bit seed and stream (bit patterns)."""
    return v2_words_at(seed_lo, seed_hi, stream_lo, stream_hi, offs_o >> 6, (offs_o >> 3) & 7, offs_o & 7,
                       offs_i >> 7, (offs_i >> 3) & 15, offs_i & 7)


@triton.jit
def v2_signs(seed_lo, seed_hi, stream_lo, stream_hi, offs_o, offs_i, DTYPE: tl.constexpr):
    """W_signs[o, i] as +-1 in DTYPE, one weight per element (the reference path)."""
    word, bit = v2_words(seed_lo, seed_hi, stream_lo, stream_hi, offs_o, offs_i)
    return tl.where(((word >> bit) & 1) != 0, -1.0, 1.0).to(DTYPE)


@triton.jit
def v2_sign_pairs(word_a, word_b, bit, DTYPE: tl.constexpr):
    """Two weights per 32-bit register from the words of their two calls (fast path, GPU only).

    word_a, word_b: the element's word from the call of the pair's even and odd member (equal for
    both elements of a pair); bit: the shared bit position (< 32). Element 2k gets word_a's bit,
    2k+1 word_b's. After merging the words' halves that hold the bit, (merged << (15 - q)) moves
    the two bits to 15 and 31, the sign bits of a 16-bit pair, and one LOP3 adds the bits of 1.0.
    """
    return v2_sign_pairs_pq(word_a, word_b, bit >> 4, bit & 15, DTYPE)


@triton.jit
def v2_sign_pairs_pq(word_a, word_b, p, q, DTYPE: tl.constexpr):
    """v2_sign_pairs with the bit given as its block offsets: bit (16 p + q) mod 32 of the words,
    so the half-word holding it is p mod 2 and its place in the half is q (< 16). A kernel whose
    layout fixes p mod 2 per register (the one-pass kernels) lets the compiler drop the select."""
    merged = tl.where((p & 1) == 0, (word_a & 0xFFFF) | (word_b << 16), (word_a >> 16) | (word_b & 0xFFFF0000))
    if DTYPE == tl.bfloat16:
        return tl.inline_asm_elementwise(
            "{ .reg .b32 t; shl.b32 t, $1, $3; lop3.b32 $0, t, 0x80008000, 0x3F803F80, 0xEA; }",
            "=r,r,r,r,r", [merged, (15 - q + merged * 0).to(tl.uint32)], dtype=tl.bfloat16, is_pure=True, pack=2)
    else:
        return tl.inline_asm_elementwise(
            "{ .reg .b32 t; shl.b32 t, $1, $3; lop3.b32 $0, t, 0x80008000, 0x3C003C00, 0xEA; }",
            "=r,r,r,r,r", [merged, (15 - q + merged * 0).to(tl.uint32)], dtype=tl.float16, is_pure=True, pack=2)


@triton.jit
def warp_span_rows(rows_t, NUM_WARPS: tl.constexpr, SPAN: tl.constexpr = 64):
    """The row of W (forward, SPAN = 64) or of W^T (input gradient, SPAN = 128), within a block
    of SPAN * NUM_WARPS, that v2 kernels give each row of an mma.sync / wgmma tile: warp w holds
    tensor rows 16 w + 16 NUM_WARPS rep + r (r < 16), which become rows SPAN w + 16 rep + r, so
    that each warp holds one call span in registers and the bit index depends on them only."""
    warp = (rows_t // 16) % NUM_WARPS
    rep = rows_t // (16 * NUM_WARPS)
    return warp * SPAN + rep * 16 + (rows_t % 16)
