"""SGRAF (Diao et al., AAAI 2021): similarity graph reasoning (SGR) or attention filtration (SAF).

Image: Linear(2048→1024) per region, l2norm (eps added to the norm). Text: word embedding 300 →
dropout 0.4 → bi-GRU 1024 (forward and backward averaged) → l2norm per word. The similarity of an
(image, caption) pair builds one 256-d alignment vector per word (SCAN text-to-image attention,
smooth 9) plus a global one (VisualSA / TextSA), then reasons over them (SGR, 3 graph steps, node 0)
or filters them (SAF), and squashes ``Linear(256→1)`` through a sigmoid.

The authors loop over captions in Python; :meth:`EncoderSimilarity.reference` scores a whole block
of images × captions at once, with padded words masked out of every normalisation, softmax and
sum, so each score equals the one-pair computation. Training and evaluation run faster
re-arrangements of it (``sgraf_scoring.train_scores`` / ``score_block``: captions grouped by length
in small slices against all images, the same numbers to float rounding; in float64 a training run
follows the reference's trajectory to ~1e-11). VisualSA and TextSA depend on one side only and are
computed when the image / caption is encoded. VisualSA's ``BatchNorm1d(36)`` normalises over the
*region* axis, which is why SGRAF needs exactly 36 regions per image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from itmflow.errors import ModelInputError
from trainers.models.common import MatchingModel, l1norm, l2norm, length_mask, scoring_without_grad
from trainers.models.sgraf_scoring import FoldedGraph, score_block, train_scores
from trainers.models.spec import ModelSpec

EPS = 1e-8


@dataclass
class SgrafConfig:
    """SGRAF sizes; defaults are the authors' ``opts.py`` (COCO vocabulary size)."""

    module: Literal["SGR", "SAF"] = "SGR"
    vocab_size: int = 11353
    """Rows of the word embedding; must equal the caption store's vocabulary size."""
    feature_dim: int = 2048
    word_dim: int = 300
    embed_size: int = 1024
    sim_dim: int = 256
    sgr_step: int = 3
    num_layers: int = 1
    bi_gru: bool = True
    no_imgnorm: bool = False
    no_txtnorm: bool = False
    num_regions: int = 36
    """Regions per image; VisualSA's BatchNorm1d has one channel per region (36 in the paper)."""
    smooth: float = 9.0
    dropout: float = 0.4


def _xavier(module: nn.Module) -> None:
    """The authors' init: U(-r, r), r = sqrt(6 / (in + out)), bias 0; BatchNorm γ=1, β=0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            r = math.sqrt(6.0) / math.sqrt(m.in_features + m.out_features)
            nn.init.uniform_(m.weight, -r, r)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class EncoderImage(nn.Module):
    def __init__(self, feature_dim: int, embed_size: int, no_imgnorm: bool = False):
        super().__init__()
        self.no_imgnorm = no_imgnorm
        self.fc = nn.Linear(feature_dim, embed_size)
        _xavier(self)

    def forward(self, features: Tensor) -> Tensor:
        x = self.fc(features)
        return x if self.no_imgnorm else l2norm(x, eps=EPS)


class EncoderText(nn.Module):
    def __init__(self, vocab_size: int, word_dim: int, embed_size: int, num_layers: int,
                 bi_gru: bool = True, no_txtnorm: bool = False, dropout: float = 0.4):
        super().__init__()
        self.embed_size = embed_size
        self.no_txtnorm = no_txtnorm
        self.bi_gru = bi_gru
        self.embed = nn.Embedding(vocab_size, word_dim)
        self.dropout = nn.Dropout(dropout)
        self.cap_rnn = nn.GRU(word_dim, embed_size, num_layers, batch_first=True,
                              bidirectional=bi_gru)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        x = self.dropout(self.embed(ids))
        packed = pack_padded_sequence(x, lengths.cpu().clamp(min=1), batch_first=True,
                                      enforce_sorted=False)
        out, _ = self.cap_rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        if self.bi_gru:
            half = out.shape[2] // 2
            out = (out[:, :, :half] + out[:, :, half:]) / 2
        return out if self.no_txtnorm else l2norm(out, eps=EPS)


def _self_attention_pool(local: Tensor, l_emb: Tensor, g_emb: Tensor, common: nn.Module,
                         valid: Tensor | None) -> Tensor:
    """Softmax-weighted sum of ``local`` with weights ``common(l_emb * g_emb)``, then l2norm."""
    weights = common(l_emb * g_emb.unsqueeze(1)).squeeze(2)
    if valid is not None:
        weights = weights.masked_fill(~valid, float("-inf"))
    weights = torch.softmax(weights, dim=1)
    return l2norm((weights.unsqueeze(2) * local).sum(dim=1), eps=EPS)


class VisualSA(nn.Module):
    """Global image vector by self-attention over the regions (BatchNorm over the region axis)."""

    def __init__(self, embed_dim: int, dropout: float, num_region: int):
        super().__init__()
        self.embedding_local = nn.Sequential(nn.Linear(embed_dim, embed_dim),
                                             nn.BatchNorm1d(num_region), nn.Tanh(),
                                             nn.Dropout(dropout))
        self.embedding_global = nn.Sequential(nn.Linear(embed_dim, embed_dim),
                                              nn.BatchNorm1d(embed_dim), nn.Tanh(),
                                              nn.Dropout(dropout))
        self.embedding_common = nn.Sequential(nn.Linear(embed_dim, 1))
        _xavier(self)

    def forward(self, local: Tensor, raw_global: Tensor) -> Tensor:
        return _self_attention_pool(local, self.embedding_local(local),
                                    self.embedding_global(raw_global), self.embedding_common, None)


class TextSA(nn.Module):
    """Global caption vector by self-attention over its (valid) words."""

    def __init__(self, embed_dim: int, dropout: float):
        super().__init__()
        self.embedding_local = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.Tanh(),
                                             nn.Dropout(dropout))
        self.embedding_global = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.Tanh(),
                                              nn.Dropout(dropout))
        self.embedding_common = nn.Sequential(nn.Linear(embed_dim, 1))
        _xavier(self)

    def forward(self, local: Tensor, raw_global: Tensor, valid: Tensor) -> Tensor:
        return _self_attention_pool(local, self.embedding_local(local),
                                    self.embedding_global(raw_global), self.embedding_common,
                                    valid)


class GraphReasoning(nn.Module):
    """One SGR step over the ``L+1`` alignment nodes of every pair (padded nodes masked as keys)."""

    def __init__(self, sim_dim: int):
        super().__init__()
        self.graph_query_w = nn.Linear(sim_dim, sim_dim)
        self.graph_key_w = nn.Linear(sim_dim, sim_dim)
        self.sim_graph_w = nn.Linear(sim_dim, sim_dim)
        _xavier(self)

    def forward(self, x: Tensor, node_valid: Tensor) -> Tensor:
        edges = self.graph_query_w(x) @ self.graph_key_w(x).transpose(-1, -2)
        edges = edges.masked_fill(~node_valid.unsqueeze(-2), float("-inf"))
        return F.relu(self.sim_graph_w(torch.softmax(edges, dim=-1) @ x))


class AttentionFiltration(nn.Module):
    """SAF: gate every node by ``sigmoid(BN(Linear(node)))``, l1-normalise, weighted sum, l2norm."""

    def __init__(self, sim_dim: int):
        super().__init__()
        self.attn_sim_w = nn.Linear(sim_dim, 1)
        self.bn = nn.BatchNorm1d(1)
        _xavier(self)

    def _batch_norm(self, a: Tensor, node_valid: Tensor) -> Tensor:
        """BatchNorm1d(1) on ``a [Ni, Nc, N]`` as the authors apply it: one caption at a time.

        In training each caption's statistics come from all images × its valid nodes, and the
        running averages are updated once per caption in caption order (closed form of the
        sequential momentum updates). In eval the running statistics are used.
        """
        bn = self.bn
        if not self.training:
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            return (a - bn.running_mean) * scale + bn.bias
        mask = node_valid.unsqueeze(0).expand_as(a).to(a.dtype)
        count = mask.sum(dim=(0, 2))                                   # [Nc]
        mean = (a * mask).sum(dim=(0, 2)) / count
        var = ((a - mean[None, :, None]).pow(2) * mask).sum(dim=(0, 2)) / count
        out = (a - mean[None, :, None]) / torch.sqrt(var[None, :, None] + bn.eps)
        out = out * bn.weight + bn.bias
        with torch.no_grad():
            m = bn.momentum if bn.momentum is not None else 0.1
            n = mean.shape[0]
            decay = (1 - m) ** torch.arange(n - 1, -1, -1, device=a.device, dtype=a.dtype)
            unbiased = var * count / (count - 1).clamp(min=1)
            bn.running_mean.mul_((1 - m) ** n).add_((m * decay * mean.detach()).sum())
            bn.running_var.mul_((1 - m) ** n).add_((m * decay * unbiased.detach()).sum())
            bn.num_batches_tracked.add_(n)
        return out

    def forward(self, x: Tensor, node_valid: Tensor) -> Tensor:
        a = self._batch_norm(self.attn_sim_w(x).squeeze(-1), node_valid)
        a = torch.sigmoid(a).masked_fill(~node_valid.unsqueeze(0), 0.0)
        a = l1norm(a, dim=-1, eps=EPS)
        return l2norm((a.unsqueeze(-1) * x).sum(dim=-2), eps=EPS)


class EncoderSimilarity(nn.Module):
    """SGRAF's similarity head; names follow the released ``sim_enc`` state dict."""

    #: Train through :func:`trainers.models.sgraf_scoring.train_scores` (captions grouped by
    #: length in small slices: 1.5-1.7x less CPU and up to 1.9x less memory per step than the
    #: original at batch 32-128) instead of :meth:`reference` (on by default). Its scores, loss,
    #: gradients and SAF running statistics equal the reference's to float rounding, and in
    #: float64 whole training runs on the learning collection's batches follow the reference's
    #: trajectory (tests/trainers/test_sgraf_train_step.py). In float32 the two paths round
    #: differently, and a run that sits on the loss plateau of a random start amplifies any
    #: rounding difference (the reference with its initial weights moved by 1e-7 drifts as far),
    #: so single runs of the two paths differ as much as runs of either with another seed.
    #: ``False`` trains through :meth:`reference` (tests, comparisons).
    fast_training = True

    def __init__(self, embed_size: int, sim_dim: int, module: str, sgr_step: int,
                 num_regions: int, dropout: float, smooth: float):
        super().__init__()
        self.module_name = module
        self.smooth = smooth
        self.v_global_w = VisualSA(embed_size, dropout, num_regions)
        self.t_global_w = TextSA(embed_size, dropout)
        self.sim_tranloc_w = nn.Linear(embed_size, sim_dim)
        self.sim_tranglo_w = nn.Linear(embed_size, sim_dim)
        self.sim_eval_w = nn.Linear(sim_dim, 1)
        if module == "SGR":
            self.SGR_module = nn.ModuleList([GraphReasoning(sim_dim) for _ in range(sgr_step)])
        elif module == "SAF":
            self.SAF_module = AttentionFiltration(sim_dim)
        else:
            raise ValueError(f"SGRAF module must be 'SGR' or 'SAF', got {module!r}")
        for name in ("sim_tranloc_w", "sim_tranglo_w", "sim_eval_w"):
            _xavier(getattr(self, name))
        self.folded_graph = FoldedGraph()  # evaluation-only cache (not part of the state dict)

    def local_context(self, regions: Tensor, words: Tensor, word_valid: Tensor) -> Tensor:
        """SCAN text-to-image attention for every (image, caption, word) → ``[Ni, Nc, L, E]``."""
        attn = torch.einsum("ire,cle->icrl", regions, words)
        attn = F.leaky_relu(attn, 0.1) * word_valid[None, :, None, :].to(attn.dtype)
        attn = l2norm(attn, dim=-1, eps=EPS)                    # over the caption's words
        attn = torch.softmax(attn * self.smooth, dim=2)          # over regions
        context = torch.einsum("icrl,ire->icle", attn, regions)
        return l2norm(context, eps=EPS)

    def forward(self, regions: Tensor, img_glo: Tensor, words: Tensor, word_valid: Tensor,
                cap_glo: Tensor) -> Tensor:
        """Scores ``[Ni, Nc]`` of every image against every caption.

        In eval mode without autograd (scoring a test set) this is
        :func:`trainers.models.sgraf_scoring.score_block`: the same numbers with less arithmetic.
        Otherwise (training, or gradients requested) it is
        :func:`trainers.models.sgraf_scoring.train_scores` (the same scores, loss and gradients in
        caption slices grouped by length), or :meth:`reference` when :attr:`fast_training` is off.
        """
        if scoring_without_grad(self):
            return score_block(self, regions, img_glo, words, word_valid, cap_glo, EPS)
        if self.fast_training:
            return train_scores(self, regions, img_glo, words, word_valid, cap_glo, EPS)
        return self.reference(regions, img_glo, words, word_valid, cap_glo)

    def reference(self, regions: Tensor, img_glo: Tensor, words: Tensor, word_valid: Tensor,
                  cap_glo: Tensor) -> Tensor:
        """The authors' computation vectorised over a block, padded words masked (autograd-ready)."""
        context = self.local_context(regions, words, word_valid)
        sim_loc = l2norm(self.sim_tranloc_w((context - words.unsqueeze(0)).pow(2)), eps=EPS)
        sim_glo = l2norm(self.sim_tranglo_w((img_glo[:, None] - cap_glo[None]).pow(2)), eps=EPS)
        nodes = torch.cat([sim_glo.unsqueeze(2), sim_loc], dim=2)  # [Ni, Nc, L+1, S]
        node_valid = torch.cat([word_valid.new_ones(word_valid.shape[0], 1), word_valid], dim=1)
        if self.module_name == "SGR":
            for step in self.SGR_module:
                nodes = step(nodes, node_valid[None])
            vec = nodes[:, :, 0]
        else:
            vec = self.SAF_module(nodes, node_valid)
        return torch.sigmoid(self.sim_eval_w(vec)).squeeze(-1)


class SGRAF(MatchingModel):
    """SGR or SAF (one model each; the "SGRAF" of the papers averages the two score matrices)."""

    kind = "sgraf"
    config: SgrafConfig

    def __init__(self, config: SgrafConfig | None = None):
        super().__init__()
        config = config or SgrafConfig()
        self.config = config
        self.img_enc = EncoderImage(config.feature_dim, config.embed_size, config.no_imgnorm)
        self.txt_enc = EncoderText(config.vocab_size, config.word_dim, config.embed_size,
                                   config.num_layers, config.bi_gru, config.no_txtnorm,
                                   config.dropout)
        self.sim_enc = EncoderSimilarity(config.embed_size, config.sim_dim, config.module,
                                         config.sgr_step, config.num_regions, config.dropout,
                                         config.smooth)

    def encode_images(self, images: dict[str, Tensor]) -> dict[str, Tensor]:
        """``regions [B, 36, E]`` and the VisualSA ``global [B, E]``."""
        feats = images.get("features")
        if feats is None or feats.dim() != 3 or feats.shape[-1] != self.config.feature_dim:
            shape = None if feats is None else tuple(feats.shape)
            raise ModelInputError(f"SGRAF expects image features [B, {self.config.num_regions}, "
                                  f"{self.config.feature_dim}], got {shape}")
        check_regions(feats.shape[1], images.get("num_regions"), self.config.num_regions)
        weight = self.img_enc.fc.weight
        regions = self.img_enc(feats.to(device=weight.device, dtype=weight.dtype))
        img_glo = self.sim_enc.v_global_w(regions, regions.mean(dim=1))
        return {"regions": regions, "global": img_glo}

    def encode_captions(self, captions: dict[str, Tensor]) -> dict[str, Tensor]:
        """``words [B, L, E]`` (zero past the length), ``word_mask [B, L]``, TextSA ``global``."""
        device = self.img_enc.fc.weight.device
        ids = captions["word_ids"].to(device)
        lengths = captions["word_lengths"].to(device)
        if bool((lengths < 1).any()):
            raise ModelInputError("SGRAF needs at least one word per caption (<start>/<end> "
                                  "included); a caption has length 0")
        width = int(lengths.max().item())
        ids = ids[:, :width]
        valid = length_mask(lengths, width)
        words = self.txt_enc(ids, lengths)
        words = words * valid.unsqueeze(-1).to(words.dtype)
        mean = words.sum(dim=1) / lengths.unsqueeze(1).to(words.dtype)
        cap_glo = self.sim_enc.t_global_w(words, mean, valid)
        return {"words": words, "word_mask": valid, "global": cap_glo}

    def similarity(self, img_emb: dict[str, Tensor], cap_emb: dict[str, Tensor]) -> Tensor:
        regions = img_emb["regions"]
        return self.sim_enc(regions, img_emb["global"], cap_emb["words"].to(regions),
                            cap_emb["word_mask"], cap_emb["global"].to(regions))

    def reference_similarity(self, img_emb: dict[str, Tensor], cap_emb: dict[str, Tensor]) -> Tensor:
        """:meth:`similarity` through the straightforward path in every mode (tests, benchmarks)."""
        regions = img_emb["regions"]
        return self.sim_enc.reference(regions, img_emb["global"], cap_emb["words"].to(regions),
                                      cap_emb["word_mask"], cap_emb["global"].to(regions))


def check_regions(k: int, num_regions: Tensor | None, expected: int = 36) -> None:
    """Raise :class:`ModelInputError` unless every image holds exactly ``expected`` regions.

    A row of a fixed-K store whose detector kept fewer regions is padded to K (zero features) and
    counts here as K: SGRAF has no region mask (VisualSA's BatchNorm1d(36) normalises over the
    region axis and the text-to-image attention runs over every region), so it takes the padding as
    regions with zero features, exactly as the authors' code takes the zero rows of a SCAN precomp
    array. Only more than ``expected`` regions, or a batch narrower than ``expected``, is refused.
    """
    counts = {int(k)}
    if num_regions is not None and bool((num_regions > k).any()):
        counts |= {int(n) for n in num_regions.tolist()}
    if counts != {expected}:
        raise ModelInputError(
            f"SGRAF needs exactly {expected} regions per image (VisualSA's BatchNorm1d has one "
            f"channel per region), but this batch has images with {sorted(counts)} regions. Use a "
            f"region store extracted with a fixed {expected} regions (--regions {expected}) or the "
            "imported SCAN precomp features")


def _preset(module: str) -> Callable[[str], dict[str, Any]]:
    def preset(dataset: str) -> dict[str, Any]:
        # opts.py / README: Adam 2e-4, lr = 2e-4 * 0.1 ** (epoch // lr_update), bs 128, val
        # every 1000; COCO 20 epochs (update 10), Flickr30k SGR 40 (30) and SAF 30 (20).
        if dataset == "coco":
            epochs, update = 20, 10
        elif module == "SGR":
            epochs, update = 40, 30
        else:
            epochs, update = 30, 20
        return dict(batch_size=128, epochs=epochs, lr=2e-4, lr_step_epochs=update,
                    warmup_iters=0, val_every=1000)

    return preset


SPECS = tuple(
    ModelSpec(name=f"sgraf-{module.lower()}", kind=SGRAF.kind, config_class=SgrafConfig,
              model_class=SGRAF, needs=frozenset({"words"}), global_vectors=False,
              preset=_preset(module), fixed_config={"module": module})
    for module in ("SGR", "SAF"))


__all__ = ["SGRAF", "SPECS", "SgrafConfig", "check_regions"]
