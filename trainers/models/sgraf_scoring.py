"""SGRAF similarity for evaluation: the same numbers as the training path, with less arithmetic.

Used by :class:`trainers.models.sgraf.EncoderSimilarity` when it is in eval mode and no gradient is
recorded (scoring a test set). Every step is exact algebra on the authors' computation (docs/guide/models.md);
only float32 rounding differs (measured below 1e-6 on the final sigmoid):

* **Captions grouped by length.** Each group is scored at its own word count, so no padded word is
  ever multiplied, normalised or masked (COCO: ~12.5 words against the ~16 a padded chunk has).
* **Context norm from the Gram matrix.** The attended context of a word is ``a @ V`` (``a`` its
  attention over the 36 regions ``V``); its norm is ``sqrt(a G aᵀ)`` with ``G = V Vᵀ`` per image
  (36 × 36), so the attention rows are scaled *before* the context product, and the subtraction
  of the word rides in the same ``baddbmm``: ``(a / |aV|) V - w`` comes out of one GEMM.
* **Folded graph attention.** A reasoning step's edge logits are ``(Wq x_i + bq)·(Wk x_j + bk)``.
  Terms constant along ``j`` cancel in the softmax over ``j``, which leaves
  ``(x_i A + c)·x_j`` with ``A = Wqᵀ Wk`` and ``c = bq Wk``: one 256 × 256 product per node
  instead of two; the step's output layer moves before the (row-stochastic) aggregation and
  shares that product's GEMM (``[A | Wgᵀ]``).
* **Only node 0 in the last step.** The score reads node 0 after the last step, so that step
  computes one query, one row of edges and one output row per pair instead of ``L + 1``.

On a CPU, images are processed in slices small enough that a slice's ``[pairs, L, 1024]`` context
stays in the caches (:data:`CPU_WORDS_PER_SLICE`, measured best on a 2-core EPYC: 256 pairs ran
8.6k pairs/s, 128 8.1k, 512 7.8k), which keeps the GEMMs near their peak; an accelerator takes
large slices (:data:`DEVICE_WORDS_PER_SLICE`) so that kernel launches do not dominate.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

#: (pair, word) rows per inner slice on a CPU: ~256 pairs of 13 words, ≈ 13 MB of float32 context.
CPU_WORDS_PER_SLICE = 256 * 13
#: The same on an accelerator: ≈ 0.9 GB of context. A slice never exceeds the block it is cut from,
#: whose size already follows ``--max-memory-gb`` (:func:`trainers.scoring.block_sizes`).
DEVICE_WORDS_PER_SLICE = 16384 * 13


def _normalize(x: Tensor, eps: float) -> Tensor:
    """SGRAF's l2norm (eps added to the norm), in place on a fresh tensor."""
    return x.div_(torch.linalg.vector_norm(x, dim=-1, keepdim=True).add_(eps))


class FoldedGraph:
    """Per SGR step the folded query-key product and the output layer side by side:
    ``[A | Wgᵀ]`` (``S × 2S``, ``A = Wqᵀ Wk``) with the bias ``[c | bg]`` (``c = bq Wk``).
    Recomputed (in float64, then cast) whenever one of the weights changes."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._folded: list[tuple[Tensor, Tensor]] = []

    def get(self, steps: Any) -> list[tuple[Tensor, Tensor]]:
        tensors = [t for s in steps for t in (s.graph_query_w.weight, s.graph_query_w.bias,
                                              s.graph_key_w.weight, s.sim_graph_w.weight,
                                              s.sim_graph_w.bias)]
        key = tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in tensors)
        if key != self._key:
            folded = []
            for s in steps:
                wq = s.graph_query_w.weight.double()
                wk = s.graph_key_w.weight.double()
                bq = s.graph_query_w.bias.double()
                dtype = s.graph_query_w.weight.dtype
                weight = torch.cat([wq.t() @ wk, s.sim_graph_w.weight.double().t()], dim=1)
                bias = torch.cat([bq @ wk, s.sim_graph_w.bias.double()])
                folded.append((weight.to(dtype), bias.to(dtype)))
            self._key, self._folded = key, folded
        return self._folded


def _graph_reasoning(x: Tensor, steps: Any, folded: list[tuple[Tensor, Tensor]]) -> Tensor:
    """SGR over nodes ``x [P, N, S]`` (all valid) → node 0 after the last step, ``[P, S]``.

    A step is ``relu(Wg(softmax((x A + c) xᵀ) x) + bg)``; since every softmax row sums to 1 this is
    ``relu(softmax((x A + c) xᵀ) (x Wgᵀ + bg))``, so the query and the output layer are one
    ``S × 2S`` product per node. The last step needs node 0 only.
    """
    size = x.shape[-1]
    for weight, bias in folded[:-1]:
        both = torch.addmm(bias, x.reshape(-1, size), weight).view(x.shape[0], x.shape[1], 2 * size)
        edges = torch.softmax(both[..., :size] @ x.transpose(1, 2), dim=-1)
        x = F.relu(edges @ both[..., size:])
    weight, bias = folded[-1]
    q0 = torch.addmm(bias[:size], x[:, 0], weight[:, :size])            # [P, S]
    edges0 = torch.softmax((x @ q0.unsqueeze(-1)).squeeze(-1), dim=-1)  # [P, N]
    return F.relu(steps[-1].sim_graph_w((edges0.unsqueeze(1) @ x).squeeze(1)))


def _attention_filtration(x: Tensor, saf: Any, eps: float) -> Tensor:
    """SAF in eval mode (BatchNorm with running statistics) over nodes ``x [P, N, S]`` → ``[P, S]``."""
    bn = saf.bn
    a = saf.attn_sim_w(x).squeeze(-1)
    a = (a - bn.running_mean) * (bn.weight / torch.sqrt(bn.running_var + bn.eps)) + bn.bias
    a = torch.sigmoid(a)
    a = a / (a.abs().sum(dim=-1, keepdim=True) + eps)
    return _normalize((a.unsqueeze(1) @ x).squeeze(1), eps)


@torch.no_grad()
def score_block(sim: Any, regions: Tensor, img_glo: Tensor, words: Tensor, word_valid: Tensor,
                cap_glo: Tensor, eps: float) -> Tensor:
    """Sigmoid scores ``[Ni, Nc]`` of ``sim`` (an ``EncoderSimilarity`` in eval mode).

    ``regions [Ni, R, E]``, ``img_glo [Ni, E]``; ``words [Nc, L, E]`` with ``word_valid [Nc, L]``
    (valid words first), ``cap_glo [Nc, E]``.
    """
    n_img, n_reg, dim = regions.shape
    n_cap = words.shape[0]
    out = regions.new_empty(n_img, n_cap)
    if n_img == 0 or n_cap == 0:
        return out
    lengths = word_valid.sum(dim=1)
    gram = regions @ regions.transpose(1, 2)                           # [Ni, R, R]
    sgr = sim.module_name == "SGR"
    folded = sim.folded_graph.get(sim.SGR_module) if sgr else None
    slice_words = CPU_WORDS_PER_SLICE if regions.device.type == "cpu" else DEVICE_WORDS_PER_SLICE
    for length in torch.unique(lengths).tolist():
        idx = torch.nonzero(lengths == length).squeeze(1)
        n = int(idx.numel())
        w = words[idx, :length]                                        # [n, L, E]
        flat_w = w.reshape(n * length, dim)
        neg_w = flat_w.neg()
        glo_c = cap_glo[idx]
        per = max(1, slice_words // (n * length))
        for i0 in range(0, n_img, per):
            i1 = min(n_img, i0 + per)
            m = i1 - i0
            v = regions[i0:i1]
            # SCAN text-to-image attention (smooth λ): [m, R, n·L] logits, l2norm over each
            # caption's words, softmax over regions.
            attn = F.leaky_relu(v.reshape(m * n_reg, dim) @ flat_w.t(), 0.1).view(m, n_reg, n, length)
            attn = _normalize(attn, eps).mul_(sim.smooth).softmax(dim=1).view(m, n_reg, n * length)
            # |context| = sqrt(aᵀ G a): scale the attention so the product is already normalised.
            norm2 = (torch.bmm(gram[i0:i1], attn) * attn).sum(dim=1, keepdim=True)
            attn = attn / norm2.clamp_min_(0).sqrt_().add_(eps)
            diff = torch.baddbmm(neg_w, attn.transpose(1, 2), v).square_()  # [m, n·L, E]
            sim_loc = _normalize(sim.sim_tranloc_w(diff), eps).view(m * n, length, -1)
            glo = sim.sim_tranglo_w((img_glo[i0:i1, None] - glo_c[None]).square_())
            nodes = torch.cat([_normalize(glo, eps).view(m * n, 1, -1), sim_loc], dim=1)  # [m·n, L+1, S]
            vec = (_graph_reasoning(nodes, sim.SGR_module, folded) if sgr
                   else _attention_filtration(nodes, sim.SAF_module, eps))
            out[i0:i1, idx] = torch.sigmoid(sim.sim_eval_w(vec)).view(m, n)
    return out


# ------------------------------------------------------------------------------------- training
#: (pair, word) rows per training slice on a CPU: all images of the batch × as many captions of
#: one length as fit (≈ 16 MB of float32 ``[pairs, L, 1024]`` difference), so every intermediate
#: stays far below glibc's 32 MB mmap ceiling and is served from (and returned to) the heap instead
#: of being mapped and page-faulted afresh each step.
CPU_TRAIN_WORDS_PER_SLICE = 4096
#: The same on an accelerator (fewer, larger kernels).
DEVICE_TRAIN_WORDS_PER_SLICE = 16384 * 13


class _SquaredLinear(torch.autograd.Function):
    """``(x ** 2) Wᵀ + b`` for 2-D ``x`` that saves only ``x``: backward recomputes the square
    (an element-wise pass) instead of keeping a second ``[pairs·L, E]`` tensor alive."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        device = x.device.type
        ctx.autocast = (device, torch.get_autocast_dtype(device)) \
            if torch.is_autocast_enabled(device) else None
        ctx.save_for_backward(x, weight)
        return torch.addmm(bias, x.square(), weight.t())

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        device, dtype = ctx.autocast or (x.device.type, None)
        # Under the forward's autocast state (as torch.amp.custom_bwd does), so that bf16/fp16
        # gradients meet float32 weights in autocast GEMMs; autograd casts each result back.
        with torch.autocast(device, dtype=dtype, enabled=ctx.autocast is not None):
            gx = gw = gb = None
            if ctx.needs_input_grad[0]:
                gx = (grad @ weight).mul_(x).mul_(2)
            if ctx.needs_input_grad[1]:
                gw = grad.t() @ x.square()
            if ctx.needs_input_grad[2]:
                gb = grad.sum(dim=0)
        return gx, gw, gb


def _l2(x: Tensor, eps: float) -> Tensor:
    """SGRAF's l2norm (eps added to the norm), autograd-safe (not in place)."""
    return x / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) + eps)


def _folded_weights(steps: Any) -> list[tuple[Tensor, Tensor]]:
    """:class:`FoldedGraph`'s ``[A | Wgᵀ]`` and ``[c | bg]`` as differentiable functions of the
    parameters (computed once per training step; gradients flow back to ``Wq``, ``bq``, ``Wk``,
    ``Wg``, ``bg``). ``graph_key_w.bias`` only adds terms constant along the softmax axis, so its
    true gradient is 0: it enters the graph multiplied by 0, so it gets exactly that (a parameter
    without a gradient would stop DDP, which expects one for every parameter)."""
    out = []
    for s in steps:
        wk = s.graph_key_w.weight
        weight = torch.cat([s.graph_query_w.weight.t() @ wk, s.sim_graph_w.weight.t()], dim=1)
        bias = torch.cat([s.graph_query_w.bias @ wk + 0.0 * s.graph_key_w.bias.sum(),
                          s.sim_graph_w.bias])
        out.append((weight, bias))
    return out


def _graph_reasoning_train(x: Tensor, steps: Any, folded: list[tuple[Tensor, Tensor]]) -> Tensor:
    """:func:`_graph_reasoning` with autograd (no in-place ops on saved tensors)."""
    size = x.shape[-1]
    for weight, bias in folded[:-1]:
        both = torch.addmm(bias, x.reshape(-1, size), weight).view(x.shape[0], x.shape[1], 2 * size)
        edges = torch.softmax(torch.bmm(both[..., :size], x.transpose(1, 2)), dim=-1)
        x = F.relu(torch.bmm(edges, both[..., size:]))
    weight, bias = folded[-1]
    q0 = torch.addmm(bias[:size], x[:, 0], weight[:, :size])              # [P, S]
    edges0 = torch.softmax(torch.bmm(x, q0.unsqueeze(-1)).squeeze(-1), dim=-1)
    return F.relu(steps[-1].sim_graph_w(torch.bmm(edges0.unsqueeze(1), x).squeeze(1)))


def train_scores(sim: Any, regions: Tensor, img_glo: Tensor, words: Tensor, word_valid: Tensor,
                 cap_glo: Tensor, eps: float) -> Tensor:
    """Sigmoid scores ``[Ni, Nc]`` with autograd: the training path of ``EncoderSimilarity``.

    The same loss and gradients as ``EncoderSimilarity.reference`` (to float32 rounding; tested
    in ``tests/trainers/test_sgraf_train_step.py``) with the structure of the authors' loop —
    captions in small slices against all images — and the evaluation path's algebra:

    * captions grouped by length, each slice at its own word count (no padded word);
    * a slice holds all images × a few captions (:data:`CPU_TRAIN_WORDS_PER_SLICE`), so its
      temporaries are reused from the heap rather than freshly mapped each step;
    * the context norm from the Gram matrix, so the attended context is normalised inside the
      GEMM that subtracts the word: backward keeps one ``[pairs, L, E]`` tensor per slice (the
      difference; :class:`_SquaredLinear` recomputes its square) instead of three;
    * SGR: folded query·key (``A = Wqᵀ Wk``), output layer before the aggregation, node 0 only in
      the last step (the score reads node 0 only, so the other nodes' gradients are zero anyway);
    * SAF: BatchNorm statistics per caption over all images × its nodes, as the authors' per-caption
      ``BatchNorm1d(1)`` call; the running averages are updated once per caption in caption order.
    """
    n_img, n_reg, dim = regions.shape
    n_cap = words.shape[0]
    if n_img == 0 or n_cap == 0:
        return regions.new_zeros(n_img, n_cap)
    lengths = word_valid.sum(dim=1)
    gram = torch.bmm(regions, regions.transpose(1, 2))                     # [Ni, R, R]
    sgr = sim.module_name == "SGR"
    folded = _folded_weights(sim.SGR_module) if sgr else None
    saf = None if sgr else sim.SAF_module
    stats: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []                # idx, mean, var, count
    budget = CPU_TRAIN_WORDS_PER_SLICE if regions.device.type == "cpu" else DEVICE_TRAIN_WORDS_PER_SLICE
    loc_w, loc_b = sim.sim_tranloc_w.weight, sim.sim_tranloc_w.bias
    flat_regions = regions.reshape(n_img * n_reg, dim)
    columns, order = [], []
    for length in torch.unique(lengths).tolist():
        group = torch.nonzero(lengths == length).squeeze(1)
        per = max(1, budget // (n_img * length))
        for c0 in range(0, int(group.numel()), per):
            idx = group[c0:c0 + per]
            n = int(idx.numel())
            flat_w = words[idx, :length].reshape(n * length, dim)
            # SCAN text-to-image attention: leaky ReLU, l2norm over the caption's words, softmax
            # over regions (smooth λ) → [Ni, R, n·L].
            attn = F.leaky_relu(flat_regions @ flat_w.t(), 0.1).view(n_img, n_reg, n, length)
            attn = torch.softmax(_l2(attn, eps) * sim.smooth, dim=1).view(n_img, n_reg, n * length)
            # |context| = sqrt(aᵀ G a); (a / (|aV| + eps)) V - w in one batched GEMM.
            norm = ((torch.bmm(gram, attn) * attn).sum(dim=1, keepdim=True)).clamp_min(0).sqrt()
            attn = attn / (norm + eps)
            diff = torch.baddbmm(flat_w.neg(), attn.transpose(1, 2), regions)  # [Ni, n·L, E]
            sim_loc = _SquaredLinear.apply(diff.view(-1, dim), loc_w, loc_b)
            sim_loc = _l2(sim_loc, eps).view(n_img * n, length, -1)
            glo = sim.sim_tranglo_w((img_glo[:, None] - cap_glo[idx][None]).square())
            nodes = torch.cat([_l2(glo, eps).view(n_img * n, 1, -1), sim_loc], dim=1)  # [Ni·n, L+1, S]
            if sgr:
                vec = _graph_reasoning_train(nodes, sim.SGR_module, folded)
            else:
                vec, mean, var = _attention_filtration_train(nodes.view(n_img, n, length + 1, -1),
                                                             saf, eps)
                if mean is not None:
                    stats.append((idx, mean, var, n_img * (length + 1)))
            columns.append(torch.sigmoid(sim.sim_eval_w(vec)).view(n_img, n))
            order.append(idx)
    if stats:
        _update_running_stats(saf.bn, stats, n_cap)
    perm = torch.cat(order)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(n_cap, device=perm.device)
    return torch.cat(columns, dim=1).index_select(1, inverse)


def _attention_filtration_train(x: Tensor, saf: Any, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """SAF over ``x [Ni, n, N, S]`` (n captions, all N nodes valid) with training BatchNorm:
    each caption's statistics over all images × its nodes → ``([Ni·n, S], mean [n], var [n])``."""
    bn = saf.bn
    a = saf.attn_sim_w(x).squeeze(-1)                                      # [Ni, n, N]
    n_img, n, nodes, size = x.shape
    if not saf.training:  # eval mode with gradients: the running statistics
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        a = torch.sigmoid((a - bn.running_mean) * scale + bn.bias)
        a = a / (a.abs().sum(dim=-1, keepdim=True) + eps)
        vec = torch.bmm(a.reshape(n_img * n, 1, nodes), x.reshape(n_img * n, nodes, size))
        return _l2(vec.squeeze(1), eps), None, None
    mean = a.mean(dim=(0, 2))
    centred = a - mean[None, :, None]
    var = centred.square().mean(dim=(0, 2))
    a = centred / torch.sqrt(var[None, :, None] + bn.eps) * bn.weight + bn.bias
    a = torch.sigmoid(a)
    a = a / (a.abs().sum(dim=-1, keepdim=True) + eps)
    vec = torch.bmm(a.reshape(n_img * n, 1, nodes), x.reshape(n_img * n, nodes, size)).squeeze(1)
    return _l2(vec, eps), mean.detach(), var.detach()


def _update_running_stats(bn: Any, stats: list, n_cap: int) -> None:
    """The running averages after one ``BatchNorm1d`` call per caption in caption order (closed
    form of the sequential momentum updates), from the slices' per-caption statistics."""
    with torch.no_grad():
        ref = stats[0][1]
        mean = ref.new_empty(n_cap)
        unbiased = ref.new_empty(n_cap)
        for idx, m_, v_, count in stats:
            mean[idx] = m_
            unbiased[idx] = v_ * count / max(count - 1, 1)
        m = bn.momentum if bn.momentum is not None else 0.1
        decay = (1 - m) ** torch.arange(n_cap - 1, -1, -1, device=ref.device, dtype=ref.dtype)
        bn.running_mean.mul_((1 - m) ** n_cap).add_((m * decay * mean).sum())
        bn.running_var.mul_((1 - m) ** n_cap).add_((m * decay * unbiased).sum())
        bn.num_batches_tracked.add_(n_cap)
