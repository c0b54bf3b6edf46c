"""The Triton kernels: flash-attention forward, backward (preprocess, dK/dV, dQ) and the dropout mask.

Conventions shared by every kernel:

* Work is described per *sequence*: a dense call has one sequence per batch element (``q_start = 0``,
  ``q_len = Mq``, ``k_start = 0``, ``k_len = Mk``); a block-diagonal call (``VARLEN``) has batch 1 and one
  sequence per block, read from the ``SEQ_*`` arrays. Grids are one-dimensional: ``pid`` decomposes into
  (tile, head ``h``, group ``g``, sequence ``s``), tile fastest so programs running together share keys in L2.
* The band is ``band_lo <= key - query - shift <= band_hi`` in sequence-local indices, with ``shift =
  band_br * (k_len - q_len)``; a missing side is a sentinel of magnitude 2**30. The loops over the other
  axis are split in three: tiles that may hold masked pairs before the band's full part, full tiles
  (no mask arithmetic at all), and masked tiles after. Tiles that cannot hold an allowed pair are never
  visited. With ``ONE_LOOP`` (a tuning choice) the three ranges run as one loop, one software pipeline, the
  edge tiles masked on a branch and rows past the end read clamped; the forward's warp-specialized variant,
  ``WS``, runs one loop with no branch (see ``fwd_kernel``).
* Scores are kept in base 2: ``s2 = scale * log2(e) * q.k + log2(e) * bias`` so that ``exp2`` is used; the LSE
  written out is natural (``ln 2 * (m + log2 l)``). Fully masked rows give output 0 and LSE ``-inf``;
  the backward receives ``m2 = lse * log2(e)`` with ``-inf`` replaced by ``+inf`` so their ``P`` is 0.
* Dropout keeps a pair iff ``tl.rand(seed, flat) >= p`` where ``flat`` is the int64 index of the pair in
  the ``[B, G, H, Mq, Mk_logical]`` grid; the forward, the backward and :func:`dropout_mask_kernel`
  regenerate the same mask whatever the tiling.
"""

from __future__ import annotations

import triton.language as tl  # type: ignore[import-untyped]  # triton ships no type information

from ._jit import jit

__all__ = [
    "bwd_dkdv_kernel",
    "bwd_dq_kernel",
    "bwd_preprocess_kernel",
    "dropout_mask_kernel",
    "fwd_kernel",
]

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)

@jit
def _decode(pid: tl.tensor, num_blocks: tl.tensor, G: tl.tensor, H: tl.tensor) -> tl.tensor:
    """``pid`` -> (tile, h, g, s), tile fastest."""
    blk = pid % num_blocks
    rest = pid // num_blocks
    h = rest % H
    rest = rest // H
    g = rest % G
    s = rest // G
    return blk, h, g, s


@jit
def _sequence(s: tl.tensor, SEQ_Q: tl.tensor, SEQ_K: tl.tensor, SEQ_KLEN: tl.tensor, SEQ_KLOG: tl.tensor, Mq: tl.tensor, Mk: tl.tensor,
              VARLEN: tl.constexpr) -> tl.tensor:
    """``(b, q_start, q_len, k_start, k_len, k_log)`` of sequence ``s`` (``k_log``: logical key start, for dropout)."""
    zero = s * 0
    if VARLEN:
        q_start = tl.load(SEQ_Q + s)
        q_len = tl.load(SEQ_Q + s + 1) - q_start
        k_start = tl.load(SEQ_K + s)
        k_len = tl.load(SEQ_KLEN + s)
        k_log = tl.load(SEQ_KLOG + s)
        b = zero
    else:
        q_start = zero
        q_len = zero + Mq
        k_start = zero
        k_len = zero + Mk
        k_log = zero
        b = s
    return b, q_start, q_len, k_start, k_len, k_log


@jit
def _key_rows(offs_n: tl.tensor, n_ok: tl.tensor, k_len: tl.tensor, s: tl.tensor, k_start: tl.tensor, TABLES: tl.tensor, stab: tl.tensor,
              page_size: tl.tensor, PAGED: tl.constexpr, CLAMP: tl.constexpr) -> tl.tensor:
    """Row (relative to the head's base pointer) of each key of the tile: direct, or through the page table.
    ``CLAMP`` (the one-loop kernels, which load tiles without a bounds check): a key past the end is the
    last key, its table entry included."""
    if CLAMP:
        offs_n = tl.minimum(offs_n, k_len - 1)
        n_ok = offs_n < k_len
    if PAGED:
        t = k_start + offs_n
        page = tl.load(TABLES + s * stab + t // page_size, mask=n_ok, other=0)
        rows = page * page_size + t % page_size
    else:
        rows = offs_n
    return rows


@jit
def _load_tile(base: tl.tensor, rows: tl.tensor, row_ok: tl.tensor, stride: tl.tensor, D: tl.constexpr, BLOCK_D: tl.constexpr,
               CHECK_ROWS: tl.constexpr) -> tl.tensor:
    """``[len(rows), BLOCK_D]`` tile of a row-major ``[*, D]`` view (zeros outside)."""
    offs_d = tl.arange(0, BLOCK_D)
    ptrs = base + rows[:, None] * stride + offs_d[None, :]
    if CHECK_ROWS:
        tile = tl.load(ptrs, mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    elif BLOCK_D != D:
        tile = tl.load(ptrs, mask=offs_d[None, :] < D, other=0.0)
    else:
        tile = tl.load(ptrs)
    return tile


@jit
def _store_tile(base: tl.tensor, rows: tl.tensor, row_ok: tl.tensor, stride: tl.tensor, value: tl.tensor, D: tl.constexpr, BLOCK_D: tl.constexpr) -> None:
    offs_d = tl.arange(0, BLOCK_D)
    tl.store(base + rows[:, None] * stride + offs_d[None, :], value, mask=row_ok[:, None] & (offs_d[None, :] < D))


@jit
def _keep(seed: tl.int64, keep_base: tl.tensor, offs_m: tl.tensor, offs_n: tl.tensor, MK_LOG: tl.tensor, drop_p: tl.tensor,
          TRANSPOSED: tl.constexpr) -> tl.tensor:
    """Dropout keep-mask of a tile, ``[M, N]`` (``[N, M]`` if ``TRANSPOSED``), from the flat pair index."""
    mk = MK_LOG.to(tl.int64)
    if TRANSPOSED:
        idx = keep_base + offs_m.to(tl.int64)[None, :] * mk + offs_n.to(tl.int64)[:, None]
    else:
        idx = keep_base + offs_m.to(tl.int64)[:, None] * mk + offs_n.to(tl.int64)[None, :]
    return tl.rand(seed, idx) >= drop_p


@jit
def _dot(a: tl.tensor, b: tl.tensor, acc: tl.tensor, DOT: tl.constexpr) -> tl.tensor:
    """``acc + a @ b``. ``DOT``: 0 tensor cores, 1 exact fp32 (fp32 inputs), 2 operands upcast to fp32 first
    (only under the CPU interpreter, whose bf16 dot is wrong)."""
    if DOT == 1:
        out = tl.dot(a, b, acc, input_precision="ieee")
    elif DOT == 2:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        out = tl.dot(a, b, acc)
    return out


@jit
def _dot0(a: tl.tensor, b: tl.tensor, DOT: tl.constexpr) -> tl.tensor:
    """``a @ b`` in float32 (``DOT`` as in :func:`_dot`)."""
    if DOT == 1:
        out = tl.dot(a, b, input_precision="ieee")
    elif DOT == 2:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@jit
def _tile_ranges(m0: tl.tensor, q_len: tl.tensor, k_len: tl.tensor, shift: tl.tensor, band_lo: tl.tensor, band_hi: tl.tensor,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr) -> tl.tensor:
    """For query rows ``[m0, m0 + BLOCK_M)``: key tiles ``[n_start, nA)`` masked, ``[nA, nB)`` full, ``[nB, n_end)`` masked."""
    row_last = tl.minimum(m0 + BLOCK_M, q_len) - 1
    k_lo = tl.maximum(m0 + shift + band_lo, 0)
    n_end = tl.minimum(row_last + shift + band_hi + 1, k_len)
    n_start = (k_lo // BLOCK_N) * BLOCK_N
    span = tl.maximum(n_end - n_start, 0)
    n_stop = n_start + tl.cdiv(span, BLOCK_N) * BLOCK_N
    a_lo = m0 + BLOCK_M - 1 + shift + band_lo
    a_hi = tl.minimum(m0 + shift + band_hi + 1, k_len)
    nA = n_start + tl.cdiv(tl.maximum(a_lo - n_start, 0), BLOCK_N) * BLOCK_N
    nA = tl.minimum(nA, n_stop)
    nB = nA + (tl.maximum(a_hi - nA, 0) // BLOCK_N) * BLOCK_N
    nB = tl.minimum(nB, n_stop)
    return n_start, nA, nB, n_end


# ------------------------------------------------------------------------------------------------
# forward
# ------------------------------------------------------------------------------------------------


@jit
def _fwd_tile(acc: tl.tensor, l_i: tl.tensor, m_i: tl.tensor, q: tl.tensor, n0: tl.tensor, offs_m: tl.tensor, m_ok: tl.tensor,
              k_base: tl.tensor, v_base: tl.tensor, k_desc: tl.tensor, v_desc: tl.tensor, bias_base: tl.tensor, keep_base: tl.tensor,
              s: tl.tensor, k_start: tl.tensor, k_len: tl.tensor, shift: tl.tensor, band_lo: tl.tensor, band_hi: tl.tensor,
              skm: tl.tensor, svm: tl.tensor, sbm: tl.tensor, sbn: tl.tensor, TABLES: tl.tensor, stab: tl.tensor, page_size: tl.tensor,
              MK_LOG: tl.tensor, seed: tl.int64, drop_p: tl.tensor, qk_scale: tl.tensor, edge: tl.tensor,
              K_DIM: tl.constexpr, V_DIM: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_N: tl.constexpr,
              MASKED: tl.constexpr, PAGED: tl.constexpr, HAS_BIAS: tl.constexpr, DROPOUT: tl.constexpr, USE_TMA: tl.constexpr,
              DOT: tl.constexpr, SCALE_POS: tl.constexpr, WS: tl.constexpr, ONE_LOOP: tl.constexpr) -> tl.tensor:
    """One key tile. ``WS`` (the warp-specialized loop of ``fwd_kernel``): an unmasked tile still selects its
    scores by the row bound, a no-op on the values (rows past the sequence load zeros) that Triton 3.6's
    partitioner needs: without the rows meeting the scores it rejects the loop. ``ONE_LOOP`` (every tile
    in one loop): the mask is evaluated only where the runtime flag ``edge`` says the tile has one."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    n_ok = offs_n < k_len
    if USE_TMA:
        k = k_desc.load([n0, 0])
    else:
        # (ONE_LOOP: keys past the end read the last key; only edge tiles hold them, masked)
        rows = _key_rows(offs_n, n_ok, k_len, s, k_start, TABLES, stab, page_size, PAGED, ONE_LOOP)
        k = _load_tile(k_base, rows, n_ok, skm, K_DIM, BLOCK_K, MASKED)
    qk = _dot0(q, tl.trans(k), DOT)
    if WS and not MASKED:
        qk = tl.where(m_ok[:, None], qk, 0.0)
    if HAS_BIAS or MASKED or ONE_LOOP or not SCALE_POS:
        # (with ONE_LOOP the scores are scaled before the branch: Triton 3.6's pipeliner fails on a loop whose
        # branch reads the product directly)
        sc = qk * qk_scale
        if HAS_BIAS:
            bias = tl.load(bias_base + offs_m[:, None] * sbm + offs_n[None, :] * sbn, mask=m_ok[:, None] & n_ok[None, :], other=0.0)
            sc += bias.to(tl.float32) * LOG2E
        if MASKED:
            sc = _band_mask(sc, offs_m, offs_n, n_ok, shift, band_lo, band_hi)
        elif ONE_LOOP:
            if edge:
                sc = _band_mask(sc, offs_m, offs_n, n_ok, shift, band_lo, band_hi)
        m_new = tl.maximum(m_i, tl.max(sc, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(sc - m_use[:, None])
    else:
        # no mask and no bias: every score is finite, and one FMA per score does scale and shift
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_use = m_new
        p = tl.math.exp2(qk * qk_scale - m_use[:, None])
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if DROPOUT:
        keep = _keep(seed, keep_base, offs_m, offs_n, MK_LOG, drop_p, False)
        p = tl.where(keep, p, 0.0)
    if USE_TMA:
        v = v_desc.load([n0, 0])
    else:
        v = _load_tile(v_base, rows, n_ok, svm, V_DIM, BLOCK_V, MASKED)
    acc = _dot(p.to(v.dtype), v, acc, DOT)
    return acc, l_i, m_new


@jit
def _band_mask(sc: tl.tensor, offs_m: tl.tensor, offs_n: tl.tensor, n_ok: tl.tensor, shift: tl.tensor, band_lo: tl.tensor,
               band_hi: tl.tensor) -> tl.tensor:
    """``sc`` with the pairs outside the band (key ``n``, query ``m``: ``band_lo <= n - m - shift <= band_hi``)
    or past the keys set to ``-inf``."""
    return tl.where(_band_ok(offs_m[:, None], offs_n[None, :], n_ok[None, :], shift, band_lo, band_hi), sc, float("-inf"))


@jit
def _band_ok(m: tl.tensor, n: tl.tensor, valid: tl.tensor, shift: tl.tensor, band_lo: tl.tensor, band_hi: tl.tensor) -> tl.tensor:
    """Whether query ``m`` may see key ``n`` (broadcast shapes): ``band_lo <= n - m - shift <= band_hi``, and ``valid``."""
    d = n - m - shift
    return (d >= band_lo) & (d <= band_hi) & valid


@jit(do_not_specialize=["Mq", "Mk", "MK_LOG", "num_m_blocks", "band_lo", "band_hi", "band_br", "seed", "page_size", "drop_p"])
def fwd_kernel(Q: tl.tensor, K: tl.tensor, V: tl.tensor, OUT: tl.tensor, LSE: tl.tensor, BIAS: tl.tensor,
               SEQ_Q: tl.tensor, SEQ_K: tl.tensor, SEQ_KLEN: tl.tensor, SEQ_KLOG: tl.tensor, TABLES: tl.tensor, ROWS: tl.tensor,
               sqb: tl.tensor, sqm: tl.tensor, sqg: tl.tensor, sqh: tl.tensor,
               skb: tl.tensor, skm: tl.tensor, skg: tl.tensor, skh: tl.tensor,
               svb: tl.tensor, svm: tl.tensor, svg: tl.tensor, svh: tl.tensor,
               sob: tl.tensor, som: tl.tensor, sog: tl.tensor, soh: tl.tensor,
               slb: tl.tensor, slg: tl.tensor, slh: tl.tensor,
               sbb: tl.tensor, sbg: tl.tensor, sbh: tl.tensor, sbm: tl.tensor, sbn: tl.tensor, stab: tl.tensor,
               G: tl.tensor, H: tl.tensor, Mq: tl.tensor, Mk: tl.tensor, MK_LOG: tl.tensor, num_m_blocks: tl.tensor,
               band_lo: tl.tensor, band_hi: tl.tensor, band_br: tl.tensor, qk_scale: tl.tensor,
               drop_p: tl.tensor, drop_scale: tl.tensor, seed: tl.int64, page_size: tl.tensor, num_rows: tl.tensor,
               K_DIM: tl.constexpr, V_DIM: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               VARLEN: tl.constexpr, PAGED: tl.constexpr, HAS_BIAS: tl.constexpr, DROPOUT: tl.constexpr,
               WRITE_LSE: tl.constexpr, USE_TMA: tl.constexpr, DOT: tl.constexpr, SCALE_POS: tl.constexpr,
               WS: tl.constexpr, WS_MASKED: tl.constexpr, ONE_LOOP: tl.constexpr) -> None:
    """``WS``: one loop over every key tile, warp-specialized (Triton's automatic Hopper partitioning: a TMA
    producer warp group and two consumer warp groups of ``BLOCK_M / 2`` rows each; it takes exactly one loop
    with no branch inside, so with ``WS_MASKED`` every tile runs the mask arithmetic). Without ``WS``, three
    loops: masked tiles, full tiles, masked tiles; or with ``ONE_LOOP`` one loop over the same tiles (one
    software pipeline), the edge tiles masked on a branch.

    With ``WS`` the query rows come from a product: Triton 3.6 splits a ``tl.arange`` over the rows into two
    ``[0, BLOCK_M / 2)`` ranges, one per consumer, so the second consumer's mask, stores and LSE would name
    the first one's rows, while a loaded tile and a product are split by their coordinates, correctly.
    ``ROWS`` is ``[num_rows, 16]`` in the inputs' dtype: rows 0-15 hold the digit weights (rows 0, 1, 2 are
    4096, 64, 1 in every column, the rest 0), row ``16 + r`` the base-64 digits of ``r`` in columns 0-2
    (exact in bf16 and fp16), so
    ``max(ROWS[16 + m0:][:BLOCK_M] @ ROWS[:16], 1)`` is ``m0 + arange(BLOCK_M)`` (``r < 2**20``)."""
    pid = tl.program_id(0)
    blk, h, g, s = _decode(pid, num_m_blocks, G, H)
    m_blk = num_m_blocks - 1 - blk  # longest rows first (causal)
    b, q_start, q_len, k_start, k_len, k_log = _sequence(s, SEQ_Q, SEQ_K, SEQ_KLEN, SEQ_KLOG, Mq, Mk, VARLEN)
    m0 = m_blk * BLOCK_M
    if m0 < q_len:
        b64 = b.to(tl.int64)
        g64 = g.to(tl.int64)
        h64 = h.to(tl.int64)
        q_base = Q + b64 * sqb + q_start.to(tl.int64) * sqm + g64 * sqg + h64 * sqh
        if PAGED:
            k_base = K + b64 * skb + g64 * skg + h64 * skh
            v_base = V + b64 * svb + g64 * svg + h64 * svh
        else:
            k_base = K + b64 * skb + k_start.to(tl.int64) * skm + g64 * skg + h64 * skh
            v_base = V + b64 * svb + k_start.to(tl.int64) * svm + g64 * svg + h64 * svh
        if WS:
            rows_desc = tl.make_tensor_descriptor(ROWS, shape=[num_rows, 16], strides=[16, 1], block_shape=[BLOCK_M, 16])
            w_desc = tl.make_tensor_descriptor(ROWS, shape=[num_rows, 16], strides=[16, 1], block_shape=[16, 16])
            offs_m = tl.max(_dot0(rows_desc.load([16 + m0, 0]), w_desc.load([0, 0]), DOT), 1).to(tl.int32)
        else:
            offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < q_len
        if USE_TMA:
            q_desc = tl.make_tensor_descriptor(q_base, shape=[q_len, K_DIM], strides=[sqm, 1], block_shape=[BLOCK_M, BLOCK_K])
            k_desc = tl.make_tensor_descriptor(k_base, shape=[k_len, K_DIM], strides=[skm, 1], block_shape=[BLOCK_N, BLOCK_K])
            v_desc = tl.make_tensor_descriptor(v_base, shape=[k_len, V_DIM], strides=[svm, 1], block_shape=[BLOCK_N, BLOCK_V])
            q = q_desc.load([m0, 0])
        else:
            k_desc = k_base
            v_desc = v_base
            q = _load_tile(q_base, offs_m, m_ok, sqm, K_DIM, BLOCK_K, True)
        bgh0 = (b64 * G + g64) * H + h64
        bias_base = BIAS
        if HAS_BIAS:
            bias_base = BIAS + b64 * sbb + g64 * sbg + h64 * sbh + q_start.to(tl.int64) * sbm + k_start.to(tl.int64) * sbn
        keep_base = (bgh0 * Mq + q_start.to(tl.int64)) * MK_LOG.to(tl.int64) + k_log.to(tl.int64)
        shift = band_br * (k_len - q_len)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_V], dtype=tl.float32)
        n_start, nA, nB, n_end = _tile_ranges(m0, q_len, k_len, shift, band_lo, band_hi, BLOCK_M, BLOCK_N)
        # one loop (ONE_LOOP: edge tiles masked on a branch; WS: warp-specialized, no branch) or three: the tiles
        # before the band's full part (masked), the full tiles, the tiles after it (masked)
        if not (ONE_LOOP or WS):
            for n0 in range(n_start, nA, BLOCK_N):
                acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, n0, offs_m, m_ok, k_base, v_base, k_desc, v_desc, bias_base, keep_base,
                                          s, k_start, k_len, shift, band_lo, band_hi, skm, svm, sbm, sbn, TABLES, stab, page_size,
                                          MK_LOG, seed, drop_p, qk_scale, True, K_DIM, V_DIM, BLOCK_K, BLOCK_V, BLOCK_N,
                                          True, PAGED, HAS_BIAS, DROPOUT, USE_TMA, DOT, SCALE_POS, False, False)
        for n0 in tl.range(n_start if ONE_LOOP or WS else nA, n_end if ONE_LOOP or WS else nB, BLOCK_N, warp_specialize=WS):
            acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, n0, offs_m, m_ok, k_base, v_base, k_desc, v_desc, bias_base, keep_base,
                                      s, k_start, k_len, shift, band_lo, band_hi, skm, svm, sbm, sbn, TABLES, stab, page_size,
                                      MK_LOG, seed, drop_p, qk_scale, ((n0 < nA) | (n0 >= nB)) if ONE_LOOP else False, K_DIM, V_DIM, BLOCK_K, BLOCK_V, BLOCK_N,
                                      WS_MASKED, PAGED, HAS_BIAS, DROPOUT, USE_TMA, DOT, SCALE_POS, WS, ONE_LOOP)
        if not (ONE_LOOP or WS):
            for n0 in range(nB, n_end, BLOCK_N):
                acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, n0, offs_m, m_ok, k_base, v_base, k_desc, v_desc, bias_base, keep_base,
                                          s, k_start, k_len, shift, band_lo, band_hi, skm, svm, sbm, sbn, TABLES, stab, page_size,
                                          MK_LOG, seed, drop_p, qk_scale, True, K_DIM, V_DIM, BLOCK_K, BLOCK_V, BLOCK_N,
                                          True, PAGED, HAS_BIAS, DROPOUT, USE_TMA, DOT, SCALE_POS, False, False)
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        if DROPOUT:
            acc = acc * drop_scale
        out = acc / l_safe[:, None]
        o_base = OUT + b64 * sob + q_start.to(tl.int64) * som + g64 * sog + h64 * soh
        _store_tile(o_base, offs_m, m_ok, som, out.to(OUT.dtype.element_ty), V_DIM, BLOCK_V)
        if WRITE_LSE:
            lse = tl.where(l_i == 0.0, float("-inf"), (m_i + tl.math.log2(l_safe)) * LN2)
            tl.store(LSE + b64 * slb + g64 * slg + h64 * slh + q_start + offs_m, lse, mask=m_ok)


# ------------------------------------------------------------------------------------------------
# backward
# ------------------------------------------------------------------------------------------------


@jit
def _row_stats(o: tl.tensor, do: tl.tensor, lse_base: tl.tensor, glse_base: tl.tensor, offs_m: tl.tensor, m_ok: tl.tensor,
               HAS_GLSE: tl.constexpr) -> tl.tensor:
    """``(delta, m2)`` of rows ``offs_m`` from their ``O`` and ``dO`` tiles: ``rowsum(dO * O) - grad_lse``, and
    ``lse * log2(e)`` with ``+inf`` for fully masked rows (``lse = -inf``)."""
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    if HAS_GLSE:
        delta -= tl.load(glse_base + offs_m, mask=m_ok, other=0.0).to(tl.float32)
    lse = tl.load(lse_base + offs_m, mask=m_ok, other=0.0).to(tl.float32)
    m2 = tl.where(lse == float("-inf"), float("inf"), lse * LOG2E)
    return delta, m2


@jit(do_not_specialize=["Mq", "num_m_blocks"])
def bwd_preprocess_kernel(OUT: tl.tensor, DO: tl.tensor, LSE: tl.tensor, GLSE: tl.tensor, M2: tl.tensor, DELTA: tl.tensor,
                          sob: tl.tensor, som: tl.tensor, sog: tl.tensor, soh: tl.tensor,
                          sdb: tl.tensor, sdm: tl.tensor, sdg: tl.tensor, sdh: tl.tensor,
                          slb: tl.tensor, slg: tl.tensor, slh: tl.tensor, sgb: tl.tensor, sgg: tl.tensor, sgh: tl.tensor,
                          G: tl.tensor, H: tl.tensor, Mq: tl.tensor, num_m_blocks: tl.tensor,
                          V_DIM: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_M: tl.constexpr, HAS_GLSE: tl.constexpr) -> None:
    """``delta = rowsum(dO * O) - grad_lse`` and ``m2 = lse * log2(e)`` (``+inf`` on fully masked rows)."""
    pid = tl.program_id(0)
    blk, h, g, b = _decode(pid, num_m_blocks, G, H)
    offs_m = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < Mq
    b64 = b.to(tl.int64)
    g64 = g.to(tl.int64)
    h64 = h.to(tl.int64)
    o = _load_tile(OUT + b64 * sob + g64 * sog + h64 * soh, offs_m, m_ok, som, V_DIM, BLOCK_V, True)
    do = _load_tile(DO + b64 * sdb + g64 * sdg + h64 * sdh, offs_m, m_ok, sdm, V_DIM, BLOCK_V, True)
    delta, m2 = _row_stats(o, do, LSE + b64 * slb + g64 * slg + h64 * slh, GLSE + b64 * sgb + g64 * sgg + h64 * sgh, offs_m, m_ok, HAS_GLSE)
    row = ((b64 * G + g64) * H + h64) * Mq + offs_m
    tl.store(DELTA + row, delta, mask=m_ok)
    tl.store(M2 + row, m2, mask=m_ok)


@jit
def _dkdv_tile(dk: tl.tensor, dv: tl.tensor, k: tl.tensor, v: tl.tensor, m0: tl.tensor, offs_n: tl.tensor, n_ok: tl.tensor,
               q_base: tl.tensor, do_base: tl.tensor, dq_base: tl.tensor, md_base: tl.tensor, bias_base: tl.tensor, dbias_base: tl.tensor,
               M2: tl.tensor, DELTA: tl.tensor, keep_base: tl.tensor, q_len: tl.tensor, shift: tl.tensor, band_lo: tl.tensor, band_hi: tl.tensor,
               sqm: tl.tensor, sdm: tl.tensor, sdqm: tl.tensor, sbm: tl.tensor, sbn: tl.tensor, sdbm: tl.tensor, sdbn: tl.tensor,
               MK_LOG: tl.tensor, seed: tl.int64, drop_p: tl.tensor, drop_scale: tl.tensor, qk_scale: tl.tensor, scale: tl.tensor,
               edge: tl.tensor, K_DIM: tl.constexpr, V_DIM: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_M: tl.constexpr,
               MASKED: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DBIAS: tl.constexpr, DROPOUT: tl.constexpr, ATOMIC_DQ: tl.constexpr,
               DOT: tl.constexpr, PART: tl.constexpr, ONE_LOOP: tl.constexpr) -> tl.tensor:
    """One query tile's contribution: ``PART`` 0 to dK and dV, 1 to dK only (and dQ), 2 to dV only. ``ONE_LOOP``
    (every query tile in one loop): rows past the end read the last row, and the band (with the row bound) is
    evaluated where ``edge``."""
    offs_m = m0 + tl.arange(0, BLOCK_M)
    m_ok = offs_m < q_len
    # ONE_LOOP: rows past the end read the last row (no bounds check); only edge tiles hold them, masked
    rows_m = tl.minimum(offs_m, q_len - 1) if ONE_LOOP else offs_m
    q = _load_tile(q_base, rows_m, m_ok, sqm, K_DIM, BLOCK_K, MASKED)
    if MASKED:
        m2 = tl.load(M2 + md_base + offs_m, mask=m_ok, other=float("inf"))
    else:
        m2 = tl.load(M2 + md_base + rows_m)
    qkT = _dot0(k, tl.trans(q), DOT)
    sT = qkT * qk_scale
    if HAS_BIAS:
        biasT = tl.load(bias_base + offs_m[None, :] * sbm + offs_n[:, None] * sbn, mask=n_ok[:, None] & m_ok[None, :], other=0.0)
        sT += biasT.to(tl.float32) * LOG2E
    pT = tl.math.exp2(sT - m2[None, :])
    if MASKED:
        pT = tl.where(_band_ok(offs_m[None, :], offs_n[:, None], m_ok[None, :] & n_ok[:, None], shift, band_lo, band_hi), pT, 0.0)
    elif ONE_LOOP:
        if edge:
            pT = tl.where(_band_ok(offs_m[None, :], offs_n[:, None], m_ok[None, :] & n_ok[:, None], shift, band_lo, band_hi), pT, 0.0)
    do = _load_tile(do_base, rows_m, m_ok, sdm, V_DIM, BLOCK_V, MASKED)
    if PART != 2:
        if MASKED:
            delta = tl.load(DELTA + md_base + offs_m, mask=m_ok, other=0.0)
        else:
            delta = tl.load(DELTA + md_base + rows_m)
    if DROPOUT:
        keepT = _keep(seed, keep_base, offs_m, offs_n, MK_LOG, drop_p, True)
    if PART != 1:
        if DROPOUT:
            pdT = tl.where(keepT, pT * drop_scale, 0.0)
        else:
            pdT = pT
        dv = _dot(pdT.to(do.dtype), do, dv, DOT)
    if PART != 2:
        dpT = _dot0(v, tl.trans(do), DOT)
        if DROPOUT:
            dpT = tl.where(keepT, dpT * drop_scale, 0.0)
        dsT = pT * (dpT - delta[None, :])
        if HAS_DBIAS:
            tl.store(dbias_base + offs_m[None, :] * sdbm + offs_n[:, None] * sdbn, dsT.to(dbias_base.dtype.element_ty), mask=n_ok[:, None] & m_ok[None, :])
        ds16 = dsT.to(q.dtype)
        dk = _dot(ds16, q, dk, DOT)
        if ATOMIC_DQ:
            dq = _dot0(tl.trans(ds16), k, DOT) * scale
            offs_k = tl.arange(0, BLOCK_K)
            tl.atomic_add(dq_base + offs_m[:, None] * sdqm + offs_k[None, :], dq, mask=m_ok[:, None] & (offs_k[None, :] < K_DIM), sem="relaxed")
    return dk, dv


@jit
def _q_ranges(n0: tl.tensor, q_len: tl.tensor, k_len: tl.tensor, shift: tl.tensor, band_lo: tl.tensor, band_hi: tl.tensor,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr) -> tl.tensor:
    """For keys ``[n0, n0 + BLOCK_N)``: query tiles ``[m_start, mA)`` masked, ``[mA, mB)`` full, ``[mB, m_end)`` masked."""
    n_last = tl.minimum(n0 + BLOCK_N, k_len) - 1
    i_lo = tl.maximum(n0 - shift - band_hi, 0)
    m_end = tl.minimum(n_last - shift - band_lo + 1, q_len)
    m_start = (i_lo // BLOCK_M) * BLOCK_M
    span = tl.maximum(m_end - m_start, 0)
    m_stop = m_start + tl.cdiv(span, BLOCK_M) * BLOCK_M
    b_lo = n0 + BLOCK_N - 1 - shift - band_hi
    b_hi = tl.minimum(n0 - shift - band_lo + 1, q_len)
    b_hi = tl.where(n0 + BLOCK_N <= k_len, b_hi, 0)
    mA = m_start + tl.cdiv(tl.maximum(b_lo - m_start, 0), BLOCK_M) * BLOCK_M
    mA = tl.minimum(mA, m_stop)
    mB = mA + (tl.maximum(b_hi - mA, 0) // BLOCK_M) * BLOCK_M
    mB = tl.minimum(mB, m_stop)
    return m_start, mA, mB, m_end


@jit(do_not_specialize=["Mq", "Mk", "MK_LOG", "num_n_blocks", "band_lo", "band_hi", "band_br", "seed", "page_size", "drop_p"])
def bwd_dkdv_kernel(Q: tl.tensor, K: tl.tensor, V: tl.tensor, DO: tl.tensor, M2: tl.tensor, DELTA: tl.tensor,
                    DK: tl.tensor, DV: tl.tensor, DQ: tl.tensor, BIAS: tl.tensor, DBIAS: tl.tensor,
                    SEQ_Q: tl.tensor, SEQ_K: tl.tensor, SEQ_KLEN: tl.tensor, SEQ_KLOG: tl.tensor, SEQ_KW: tl.tensor, TABLES: tl.tensor,
                    sqb: tl.tensor, sqm: tl.tensor, sqg: tl.tensor, sqh: tl.tensor,
                    skb: tl.tensor, skm: tl.tensor, skg: tl.tensor, skh: tl.tensor,
                    svb: tl.tensor, svm: tl.tensor, svg: tl.tensor, svh: tl.tensor,
                    sdb: tl.tensor, sdm: tl.tensor, sdg: tl.tensor, sdh: tl.tensor,
                    sdkb: tl.tensor, sdkm: tl.tensor, sdkg: tl.tensor, sdkh: tl.tensor,
                    sdvb: tl.tensor, sdvm: tl.tensor, sdvg: tl.tensor, sdvh: tl.tensor,
                    sdqb: tl.tensor, sdqm: tl.tensor, sdqg: tl.tensor, sdqh: tl.tensor,
                    sbb: tl.tensor, sbg: tl.tensor, sbh: tl.tensor, sbm: tl.tensor, sbn: tl.tensor,
                    sdbb: tl.tensor, sdbg: tl.tensor, sdbh: tl.tensor, sdbm: tl.tensor, sdbn: tl.tensor, stab: tl.tensor,
                    G: tl.tensor, H: tl.tensor, Mq: tl.tensor, Mk: tl.tensor, MK_LOG: tl.tensor, num_n_blocks: tl.tensor,
                    band_lo: tl.tensor, band_hi: tl.tensor, band_br: tl.tensor, qk_scale: tl.tensor, scale: tl.tensor,
                    drop_p: tl.tensor, drop_scale: tl.tensor, seed: tl.int64, page_size: tl.tensor,
                    K_DIM: tl.constexpr, V_DIM: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    VARLEN: tl.constexpr, PAGED: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DBIAS: tl.constexpr, DROPOUT: tl.constexpr,
                    ATOMIC_DQ: tl.constexpr, DOT: tl.constexpr, PART: tl.constexpr, ONE_LOOP: tl.constexpr) -> None:
    """dK and dV of one key tile (looping over the query tiles that reach it); with ``ATOMIC_DQ`` also dQ, added in fp32.

    ``PART`` 1 computes only dK (and dQ, and dS for the bias gradient), ``PART`` 2 only dV (``P^T dO``: no
    ``dP``, no ``dS``); each then holds one ``[BLOCK_N, K]`` accumulator instead of two, which at K = 256
    leaves registers and shared memory for wider query steps (two launches, one more matmul in all)."""
    pid = tl.program_id(0)
    n_blk, h, g, s = _decode(pid, num_n_blocks, G, H)
    b, q_start, q_len, k_start, k_len, k_log = _sequence(s, SEQ_Q, SEQ_K, SEQ_KLEN, SEQ_KLOG, Mq, Mk, VARLEN)
    n0 = n_blk * BLOCK_N
    if n0 < k_len:
        b64 = b.to(tl.int64)
        g64 = g.to(tl.int64)
        h64 = h.to(tl.int64)
        q64 = q_start.to(tl.int64)
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < k_len
        if PAGED:
            k_base = K + b64 * skb + g64 * skg + h64 * skh
            v_base = V + b64 * svb + g64 * svg + h64 * svh
        else:
            k_base = K + b64 * skb + k_start.to(tl.int64) * skm + g64 * skg + h64 * skh
            v_base = V + b64 * svb + k_start.to(tl.int64) * svm + g64 * svg + h64 * svh
        rows = _key_rows(offs_n, n_ok, k_len, s, k_start, TABLES, stab, page_size, PAGED, False)
        k = _load_tile(k_base, rows, n_ok, skm, K_DIM, BLOCK_K, True)
        if PART != 2:
            v = _load_tile(v_base, rows, n_ok, svm, V_DIM, BLOCK_V, True)
        else:
            v = k  # unused: dV needs no dP
        q_base = Q + b64 * sqb + q64 * sqm + g64 * sqg + h64 * sqh
        do_base = DO + b64 * sdb + q64 * sdm + g64 * sdg + h64 * sdh
        dq_base = DQ + b64 * sdqb + q64 * sdqm + g64 * sdqg + h64 * sdqh
        bgh0 = (b64 * G + g64) * H + h64
        md_base = bgh0 * Mq + q64
        bias_base = BIAS
        if HAS_BIAS:
            bias_base = BIAS + b64 * sbb + g64 * sbg + h64 * sbh + q64 * sbm + k_start.to(tl.int64) * sbn
        dbias_base = DBIAS
        if HAS_DBIAS:
            dbias_base = DBIAS + b64 * sdbb + g64 * sdbg + h64 * sdbh + q64 * sdbm + k_start.to(tl.int64) * sdbn
        keep_base = (bgh0 * Mq + q64) * MK_LOG.to(tl.int64) + k_log.to(tl.int64)
        shift = band_br * (k_len - q_len)
        if PART != 2:
            dk = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        else:
            dk = tl.zeros([16, 16], dtype=tl.float32)  # a placeholder the loop carries untouched
        if PART != 1:
            dv = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
        else:
            dv = tl.zeros([16, 16], dtype=tl.float32)
        m_start, mA, mB, m_end = _q_ranges(n0, q_len, k_len, shift, band_lo, band_hi, BLOCK_M, BLOCK_N)
        # one loop (ONE_LOOP: edge tiles masked on a branch) or three: masked, full, masked query tiles
        if not ONE_LOOP:
            for m0 in range(m_start, mA, BLOCK_M):
                dk, dv = _dkdv_tile(dk, dv, k, v, m0, offs_n, n_ok, q_base, do_base, dq_base, md_base, bias_base, dbias_base, M2, DELTA, keep_base,
                                    q_len, shift, band_lo, band_hi, sqm, sdm, sdqm, sbm, sbn, sdbm, sdbn, MK_LOG, seed, drop_p, drop_scale, qk_scale, scale,
                                    True, K_DIM, V_DIM, BLOCK_K, BLOCK_V, BLOCK_M, True, HAS_BIAS, HAS_DBIAS, DROPOUT, ATOMIC_DQ, DOT, PART, False)
        for m0 in range(m_start if ONE_LOOP else mA, m_end if ONE_LOOP else mB, BLOCK_M):
            dk, dv = _dkdv_tile(dk, dv, k, v, m0, offs_n, n_ok, q_base, do_base, dq_base, md_base, bias_base, dbias_base, M2, DELTA, keep_base,
                                q_len, shift, band_lo, band_hi, sqm, sdm, sdqm, sbm, sbn, sdbm, sdbn, MK_LOG, seed, drop_p, drop_scale, qk_scale, scale,
                                (m0 < mA) | (m0 >= mB), K_DIM, V_DIM, BLOCK_K, BLOCK_V, BLOCK_M, False, HAS_BIAS, HAS_DBIAS, DROPOUT, ATOMIC_DQ, DOT,
                                PART, ONE_LOOP)
        if not ONE_LOOP:
            for m0 in range(mB, m_end, BLOCK_M):
                dk, dv = _dkdv_tile(dk, dv, k, v, m0, offs_n, n_ok, q_base, do_base, dq_base, md_base, bias_base, dbias_base, M2, DELTA, keep_base,
                                    q_len, shift, band_lo, band_hi, sqm, sdm, sdqm, sbm, sbn, sdbm, sdbn, MK_LOG, seed, drop_p, drop_scale, qk_scale, scale,
                                    True, K_DIM, V_DIM, BLOCK_K, BLOCK_V, BLOCK_M, True, HAS_BIAS, HAS_DBIAS, DROPOUT, ATOMIC_DQ, DOT, PART, False)
        if VARLEN:
            kw = tl.load(SEQ_KW + s).to(tl.int64)
        else:
            kw = k_start.to(tl.int64)
        dk_base = DK + b64 * sdkb + kw * sdkm + g64 * sdkg + h64 * sdkh
        dv_base = DV + b64 * sdvb + kw * sdvm + g64 * sdvg + h64 * sdvh
        if PART != 2:
            _store_tile(dk_base, offs_n, n_ok, sdkm, (dk * scale).to(DK.dtype.element_ty), K_DIM, BLOCK_K)
        if PART != 1:
            _store_tile(dv_base, offs_n, n_ok, sdvm, dv.to(DV.dtype.element_ty), V_DIM, BLOCK_V)


@jit
def _dq_tile(dq: tl.tensor, q: tl.tensor, do: tl.tensor, m2: tl.tensor, delta: tl.tensor, n0: tl.tensor, offs_m: tl.tensor, m_ok: tl.tensor,
             k_base: tl.tensor, v_base: tl.tensor, bias_base: tl.tensor, keep_base: tl.tensor,
             s: tl.tensor, k_start: tl.tensor, k_len: tl.tensor, shift: tl.tensor, band_lo: tl.tensor, band_hi: tl.tensor,
             skm: tl.tensor, svm: tl.tensor, sbm: tl.tensor, sbn: tl.tensor, TABLES: tl.tensor, stab: tl.tensor, page_size: tl.tensor,
             MK_LOG: tl.tensor, seed: tl.int64, drop_p: tl.tensor, drop_scale: tl.tensor, qk_scale: tl.tensor, edge: tl.tensor,
             K_DIM: tl.constexpr, V_DIM: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_N: tl.constexpr,
             MASKED: tl.constexpr, PAGED: tl.constexpr, HAS_BIAS: tl.constexpr, DROPOUT: tl.constexpr, DOT: tl.constexpr,
             ONE_LOOP: tl.constexpr) -> tl.tensor:
    offs_n = n0 + tl.arange(0, BLOCK_N)
    n_ok = offs_n < k_len
    # (ONE_LOOP: keys past the end read the last key; only edge tiles hold them, masked)
    rows = _key_rows(offs_n, n_ok, k_len, s, k_start, TABLES, stab, page_size, PAGED, ONE_LOOP)
    k = _load_tile(k_base, rows, n_ok, skm, K_DIM, BLOCK_K, MASKED)
    v = _load_tile(v_base, rows, n_ok, svm, V_DIM, BLOCK_V, MASKED)
    qk = _dot0(q, tl.trans(k), DOT)
    sc = qk * qk_scale
    if HAS_BIAS:
        bias = tl.load(bias_base + offs_m[:, None] * sbm + offs_n[None, :] * sbn, mask=m_ok[:, None] & n_ok[None, :], other=0.0)
        sc += bias.to(tl.float32) * LOG2E
    p = tl.math.exp2(sc - m2[:, None])
    if MASKED:
        p = tl.where(_band_ok(offs_m[:, None], offs_n[None, :], n_ok[None, :], shift, band_lo, band_hi), p, 0.0)
    elif ONE_LOOP:
        if edge:
            p = tl.where(_band_ok(offs_m[:, None], offs_n[None, :], n_ok[None, :], shift, band_lo, band_hi), p, 0.0)
    dp = _dot0(do, tl.trans(v), DOT)
    if DROPOUT:
        keep = _keep(seed, keep_base, offs_m, offs_n, MK_LOG, drop_p, False)
        dp = tl.where(keep, dp * drop_scale, 0.0)
    ds = p * (dp - delta[:, None])
    dq = _dot(ds.to(k.dtype), k, dq, DOT)
    return dq


@jit(do_not_specialize=["Mq", "Mk", "MK_LOG", "num_m_blocks", "band_lo", "band_hi", "band_br", "seed", "page_size", "drop_p"])
def bwd_dq_kernel(Q: tl.tensor, K: tl.tensor, V: tl.tensor, DO: tl.tensor, M2: tl.tensor, DELTA: tl.tensor, DQ: tl.tensor, BIAS: tl.tensor,
                  OUT: tl.tensor, LSE: tl.tensor, GLSE: tl.tensor,
                  SEQ_Q: tl.tensor, SEQ_K: tl.tensor, SEQ_KLEN: tl.tensor, SEQ_KLOG: tl.tensor, TABLES: tl.tensor,
                  sqb: tl.tensor, sqm: tl.tensor, sqg: tl.tensor, sqh: tl.tensor,
                  skb: tl.tensor, skm: tl.tensor, skg: tl.tensor, skh: tl.tensor,
                  svb: tl.tensor, svm: tl.tensor, svg: tl.tensor, svh: tl.tensor,
                  sdb: tl.tensor, sdm: tl.tensor, sdg: tl.tensor, sdh: tl.tensor,
                  sdqb: tl.tensor, sdqm: tl.tensor, sdqg: tl.tensor, sdqh: tl.tensor,
                  sbb: tl.tensor, sbg: tl.tensor, sbh: tl.tensor, sbm: tl.tensor, sbn: tl.tensor, stab: tl.tensor,
                  sob: tl.tensor, som: tl.tensor, sog: tl.tensor, soh: tl.tensor,
                  slb: tl.tensor, slg: tl.tensor, slh: tl.tensor, sgb: tl.tensor, sgg: tl.tensor, sgh: tl.tensor,
                  G: tl.tensor, H: tl.tensor, Mq: tl.tensor, Mk: tl.tensor, MK_LOG: tl.tensor, num_m_blocks: tl.tensor,
                  band_lo: tl.tensor, band_hi: tl.tensor, band_br: tl.tensor, qk_scale: tl.tensor, scale: tl.tensor,
                  drop_p: tl.tensor, drop_scale: tl.tensor, seed: tl.int64, page_size: tl.tensor,
                  K_DIM: tl.constexpr, V_DIM: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  VARLEN: tl.constexpr, PAGED: tl.constexpr, HAS_BIAS: tl.constexpr, DROPOUT: tl.constexpr, DOT: tl.constexpr,
                  HAS_GLSE: tl.constexpr, ONE_LOOP: tl.constexpr) -> None:
    """dQ of one query tile, looping over the key tiles it reaches (same tile split as the forward).

    It first computes its rows' ``delta = rowsum(dO * O) - grad_lse`` and ``m2 = lse * log2(e)`` (what
    :func:`bwd_preprocess_kernel` does for atomic dQ) and stores them for the dK/dV launches, which run after
    it: one launch and one pass over ``O`` and ``dO`` fewer."""
    pid = tl.program_id(0)
    blk, h, g, s = _decode(pid, num_m_blocks, G, H)
    m_blk = num_m_blocks - 1 - blk
    b, q_start, q_len, k_start, k_len, k_log = _sequence(s, SEQ_Q, SEQ_K, SEQ_KLEN, SEQ_KLOG, Mq, Mk, VARLEN)
    m0 = m_blk * BLOCK_M
    if m0 < q_len:
        b64 = b.to(tl.int64)
        g64 = g.to(tl.int64)
        h64 = h.to(tl.int64)
        q64 = q_start.to(tl.int64)
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < q_len
        q = _load_tile(Q + b64 * sqb + q64 * sqm + g64 * sqg + h64 * sqh, offs_m, m_ok, sqm, K_DIM, BLOCK_K, True)
        do = _load_tile(DO + b64 * sdb + q64 * sdm + g64 * sdg + h64 * sdh, offs_m, m_ok, sdm, V_DIM, BLOCK_V, True)
        bgh0 = (b64 * G + g64) * H + h64
        md = bgh0 * Mq + q64 + offs_m
        o = _load_tile(OUT + b64 * sob + q64 * som + g64 * sog + h64 * soh, offs_m, m_ok, som, V_DIM, BLOCK_V, True)
        delta, m2 = _row_stats(o, do, LSE + b64 * slb + g64 * slg + h64 * slh + q64, GLSE + b64 * sgb + g64 * sgg + h64 * sgh + q64, offs_m, m_ok, HAS_GLSE)
        tl.store(DELTA + md, delta, mask=m_ok)
        tl.store(M2 + md, m2, mask=m_ok)
        m2 = tl.where(m_ok, m2, float("inf"))
        if PAGED:
            k_base = K + b64 * skb + g64 * skg + h64 * skh
            v_base = V + b64 * svb + g64 * svg + h64 * svh
        else:
            k_base = K + b64 * skb + k_start.to(tl.int64) * skm + g64 * skg + h64 * skh
            v_base = V + b64 * svb + k_start.to(tl.int64) * svm + g64 * svg + h64 * svh
        bias_base = BIAS
        if HAS_BIAS:
            bias_base = BIAS + b64 * sbb + g64 * sbg + h64 * sbh + q64 * sbm + k_start.to(tl.int64) * sbn
        keep_base = (bgh0 * Mq + q64) * MK_LOG.to(tl.int64) + k_log.to(tl.int64)
        shift = band_br * (k_len - q_len)
        dq = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
        n_start, nA, nB, n_end = _tile_ranges(m0, q_len, k_len, shift, band_lo, band_hi, BLOCK_M, BLOCK_N)
        # one loop (ONE_LOOP: edge tiles masked on a branch) or three: masked, full, masked key tiles
        if not ONE_LOOP:
            for n0 in range(n_start, nA, BLOCK_N):
                dq = _dq_tile(dq, q, do, m2, delta, n0, offs_m, m_ok, k_base, v_base, bias_base, keep_base, s, k_start, k_len, shift, band_lo, band_hi,
                              skm, svm, sbm, sbn, TABLES, stab, page_size, MK_LOG, seed, drop_p, drop_scale, qk_scale, True,
                              K_DIM, V_DIM, BLOCK_K, BLOCK_V, BLOCK_N, True, PAGED, HAS_BIAS, DROPOUT, DOT, False)
        for n0 in range(n_start if ONE_LOOP else nA, n_end if ONE_LOOP else nB, BLOCK_N):
            dq = _dq_tile(dq, q, do, m2, delta, n0, offs_m, m_ok, k_base, v_base, bias_base, keep_base, s, k_start, k_len, shift, band_lo, band_hi,
                          skm, svm, sbm, sbn, TABLES, stab, page_size, MK_LOG, seed, drop_p, drop_scale, qk_scale, (n0 < nA) | (n0 >= nB),
                          K_DIM, V_DIM, BLOCK_K, BLOCK_V, BLOCK_N, False, PAGED, HAS_BIAS, DROPOUT, DOT, ONE_LOOP)
        if not ONE_LOOP:
            for n0 in range(nB, n_end, BLOCK_N):
                dq = _dq_tile(dq, q, do, m2, delta, n0, offs_m, m_ok, k_base, v_base, bias_base, keep_base, s, k_start, k_len, shift, band_lo, band_hi,
                              skm, svm, sbm, sbn, TABLES, stab, page_size, MK_LOG, seed, drop_p, drop_scale, qk_scale, True,
                              K_DIM, V_DIM, BLOCK_K, BLOCK_V, BLOCK_N, True, PAGED, HAS_BIAS, DROPOUT, DOT, False)
        dq_base = DQ + b64 * sdqb + q64 * sdqm + g64 * sdqg + h64 * sdqh
        _store_tile(dq_base, offs_m, m_ok, sdqm, (dq * scale).to(DQ.dtype.element_ty), K_DIM, BLOCK_K)


# ------------------------------------------------------------------------------------------------
# dropout mask (tests and debugging)
# ------------------------------------------------------------------------------------------------


@jit(do_not_specialize=["seed", "total", "drop_p"])
def dropout_mask_kernel(OUT: tl.tensor, seed: tl.int64, drop_p: tl.tensor, total: tl.int64, BLOCK: tl.constexpr) -> None:
    """``OUT[i] = keep(i)`` (int8) for the flat pair indices ``i < total``: the mask every kernel draws."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    keep = tl.rand(seed, offs) >= drop_p
    tl.store(OUT + offs, keep.to(tl.int8), mask=offs < total)
