"""Building blocks shared by TERN, TERAN and SGRAF, and helpers for their embeddings.

Module attribute names follow the authors' code (``bert_model``, ``pos_encoding_image.map``,
``transformer_encoder.layers.{i}``) so that a released state dict maps onto ours by stripping a
prefix, never by renaming inside a block.

Embeddings returned by ``encode_images`` / ``encode_captions`` are either one tensor or a dict of
tensors whose first dimension is the item axis. :func:`index_embeddings`, :func:`concat_embeddings`
and :func:`embeddings_to` work on both forms, so scoring code never needs to know which model made
them.
"""

from __future__ import annotations

import abc

from typing import Any, Union

import torch
from torch import Tensor, nn

from itmflow.errors import ConfigError, ModelInputError

Embeddings = Union[Tensor, dict[str, Tensor]]

GEOMETRY_DIM = 5
"""``[x1, y1, x2, y2, area]`` of a box normalised by the image size (TERN eq. 2)."""


# --------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------
def l2norm(x: Tensor, dim: int = -1, eps: float = 0.0) -> Tensor:
    """``x / ||x||`` along ``dim``; ``eps`` is *added to the norm* (SGRAF uses 1e-8, TERN none).

    The two variants are kept apart on purpose: TERN/TERAN divide by the bare norm, SGRAF by
    ``norm + eps``; the difference is visible in the last digits of every score.
    """
    # vector_norm avoids materialising x**2, which matters for SGRAF's [Ni, Nc, L, E] context.
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True)
    if eps:
        norm = norm + eps
    return x / norm


def l1norm(x: Tensor, dim: int = -1, eps: float = 1e-8) -> Tensor:
    """``x / (sum |x| + eps)`` along ``dim`` (SGRAF's SAF attention)."""
    return x / (x.abs().sum(dim=dim, keepdim=True) + eps)


def scoring_without_grad(module: nn.Module) -> bool:
    """True in eval mode with autograd off (scoring a test set): where a model may take an
    evaluation-only path that computes the same numbers with less arithmetic."""
    return not module.training and not torch.is_grad_enabled()


def length_mask(lengths: Tensor, size: int) -> Tensor:
    """Boolean ``[B, size]`` mask, True where ``position < length``."""
    positions = torch.arange(size, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


# --------------------------------------------------------------------------------------------------
# Transformer stacks
# --------------------------------------------------------------------------------------------------
def transformer_stack(d_model: int, layers: int, *, heads: int = 4, ff_dim: int = 2048,
                      dropout: float = 0.1) -> nn.TransformerEncoder:
    """``layers`` post-LN ``nn.TransformerEncoderLayer`` (relu), sequence-first like the authors'.

    Sequence-first (``batch_first=False``) keeps torch's fused inference fast path off, so train
    and eval compute the same arithmetic as the authors' torch-1.3 layers; the state-dict keys are
    ``layers.{i}.self_attn.in_proj_weight`` etc., as in the released checkpoints.
    """
    layer = nn.TransformerEncoderLayer(d_model=d_model, nhead=heads, dim_feedforward=ff_dim,
                                       dropout=dropout, activation="relu")
    return nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)


def run_stack(stack: nn.TransformerEncoder, x: Tensor, valid: Tensor) -> Tensor:
    """Apply a sequence-first stack to batch-first ``x [B,S,D]`` with ``valid [B,S]``; ``[B,S,D]``."""
    out = stack(x.transpose(0, 1), src_key_padding_mask=~valid)
    return out.transpose(0, 1)


# --------------------------------------------------------------------------------------------------
# BERT text branch
# --------------------------------------------------------------------------------------------------
class BertTextEncoder(nn.Module):
    """The first ``layers`` layers of a BERT, last hidden state (TERN/TERAN text branch).

    ``bert_config`` (a ``BertConfig.to_dict()``) builds the architecture without weights and without
    any hub access — used when the weights come from a checkpoint. Otherwise the pretrained weights
    are read from ``name_or_dir`` (a local directory or a hub id) and truncated to ``layers``.
    The pooler is not built: neither TERN nor TERAN uses it.
    """

    def __init__(self, name_or_dir: str, layers: int, bert_config: dict[str, Any] | None = None):
        super().__init__()
        from transformers import BertConfig, BertModel

        if bert_config is not None:
            config = BertConfig.from_dict({**bert_config, "num_hidden_layers": layers})
            self.bert_model = BertModel(config, add_pooling_layer=False)
        else:
            from transformers.utils import logging as hf_logging

            from itmflow.weights import resolve_bert

            # A local directory now, or one line naming --bert DIR (no hub retries offline).
            name_or_dir = str(resolve_bert(name_or_dir))
            # The pooler (and layers past ``layers``) are dropped on purpose; transformers would
            # print them as unexpected keys on every load.
            verbosity = hf_logging.get_verbosity()
            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
            try:
                self.bert_model = BertModel.from_pretrained(
                    name_or_dir, num_hidden_layers=layers, add_pooling_layer=False)
            except (OSError, ValueError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ConfigError(
                    f"cannot load BERT weights from {name_or_dir}: {first}; pass --bert DIR, a "
                    "directory holding config.json + model.safetensors (or pytorch_model.bin) + "
                    "vocab.txt") from None
            finally:
                hf_logging.set_verbosity(verbosity)
                if bars:
                    hf_logging.enable_progress_bar()
        self.hidden_size = int(self.bert_model.config.hidden_size)

    def bert_config(self) -> dict[str, Any]:
        """The BERT architecture as a plain dict (stored in our checkpoints' config.json)."""
        cfg = self.bert_model.config.to_dict()
        keep = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "hidden_act", "hidden_dropout_prob",
                "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
                "initializer_range", "layer_norm_eps", "pad_token_id", "position_embedding_type")
        return {k: cfg[k] for k in keep if k in cfg}

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """``[B, L]`` token ids (with [CLS]/[SEP], 0-padded) → last hidden state ``[B, L, H]``."""
        mask = length_mask(lengths.to(ids.device), ids.shape[1]).long()
        return self.bert_model(input_ids=ids, attention_mask=mask).last_hidden_state


# --------------------------------------------------------------------------------------------------
# Visual branch (TERN/TERAN)
# --------------------------------------------------------------------------------------------------
class BoxFeatureEncoder(nn.Module):
    """TERN's ``concat-and-process``: ``[feature; geometry]`` → Linear(D+5→D) → ReLU → Linear(D→D)."""

    def __init__(self, feature_dim: int):
        super().__init__()
        self.map = nn.Sequential(nn.Linear(feature_dim + GEOMETRY_DIM, feature_dim), nn.ReLU(),
                                 nn.Linear(feature_dim, feature_dim))

    def forward(self, features: Tensor, geometry: Tensor) -> Tensor:
        return self.map(torch.cat([features, geometry], dim=-1))


def prepend_image_cls(features: Tensor, geometry: Tensor, num_regions: Tensor
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """Prepend the I-CLS slot (a zero feature and a zero box) → ``(feats, geom, valid [B,K+1])``.

    The zero slot goes through the box MLP like every region, so inside the transformer it is a
    learned bias vector, exactly as in the authors' collate function.
    """
    b, _, d = features.shape
    feats = torch.cat([features.new_zeros(b, 1, d), features], dim=1)
    geom = torch.cat([geometry.new_zeros(b, 1, geometry.shape[-1]), geometry], dim=1)
    valid = length_mask(num_regions.to(features.device) + 1, feats.shape[1])
    return feats, geom, valid


class VisualTransformerEncoder(nn.Module):
    """Box MLP on every region (I-CLS included) followed by a transformer stack at d = feature dim."""

    def __init__(self, feature_dim: int, layers: int, *, heads: int = 4, ff_dim: int = 2048,
                 dropout: float = 0.1):
        super().__init__()
        self.pos_encoding_image = BoxFeatureEncoder(feature_dim)
        self.transformer_encoder = transformer_stack(feature_dim, layers, heads=heads,
                                                     ff_dim=ff_dim, dropout=dropout)

    def forward(self, features: Tensor, geometry: Tensor, valid: Tensor) -> Tensor:
        x = self.pos_encoding_image(features, geometry)
        return run_stack(self.transformer_encoder, x, valid)


def check_image_batch(images: dict[str, Tensor], feature_dim: int, *, need_geometry: bool) -> None:
    """Raise :class:`ModelInputError` when an image batch does not fit the model's sizes."""
    for key in ("features", "num_regions") + (("geometry",) if need_geometry else ()):
        if images.get(key) is None:
            raise ModelInputError(f"image batch has no {key!r} (keys: {sorted(images)}); the data "
                                  "loader must provide features, geometry and num_regions")
    feats = images["features"]
    if feats.dim() != 3 or feats.shape[-1] != feature_dim:
        raise ModelInputError(f"image features have shape {tuple(feats.shape)}, the model expects "
                              f"[B, K, {feature_dim}]; set model_config.feature_dim to the store's "
                              "feature_dim")
    if need_geometry and images["geometry"].shape[-1] != GEOMETRY_DIM:
        raise ModelInputError(f"geometry has shape {tuple(images['geometry'].shape)}, expected "
                              f"[B, K, {GEOMETRY_DIM}]")


# --------------------------------------------------------------------------------------------------
# Embedding containers
# --------------------------------------------------------------------------------------------------
def index_embeddings(emb: Embeddings, idx: Tensor | slice | list[int]) -> Embeddings:
    """Items ``idx`` (along dim 0) of a tensor or of every tensor of a dict."""
    if isinstance(emb, dict):
        return {k: v[idx] for k, v in emb.items()}
    return emb[idx]


def _pad_dim1(t: Tensor, size: int) -> Tensor:
    if t.dim() < 2 or t.shape[1] == size:
        return t
    pad = t.new_zeros((t.shape[0], size - t.shape[1]) + tuple(t.shape[2:]))
    return torch.cat([t, pad], dim=1)


def concat_embeddings(parts: list[Embeddings]) -> Embeddings:
    """Concatenate along dim 0; per-token tensors of different lengths are zero/False padded.

    Masks are padded with False, so padding added here is invisible to every similarity.
    """
    if not parts:
        raise ValueError("concat_embeddings needs at least one part")
    if isinstance(parts[0], dict):
        out = {}
        for key in parts[0]:
            tensors = [p[key] for p in parts]  # type: ignore[index]
            if tensors[0].dim() >= 2 and len({t.shape[1] for t in tensors}) > 1:
                size = max(t.shape[1] for t in tensors)
                tensors = [_pad_dim1(t, size) for t in tensors]
            out[key] = torch.cat(tensors, dim=0)
        return out
    return torch.cat(parts, dim=0)  # type: ignore[arg-type]


def embeddings_to(emb: Embeddings, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> Embeddings:
    """Move embeddings to ``device``; floating tensors also cast to ``dtype`` (masks untouched)."""

    def move(t: Tensor) -> Tensor:
        if dtype is not None and t.is_floating_point():
            return t.to(device=device, dtype=dtype)
        return t.to(device=device)

    if isinstance(emb, dict):
        return {k: move(v) for k, v in emb.items()}
    return move(emb)


def at_least_float32(t: Tensor) -> Tensor:
    """``t`` widened to float32, or as it is when already float64 (a ``dtype: float64`` run):
    losses and batch statistics are computed in at least float32 whatever autocast produced."""
    return t if t.dtype == torch.float64 else t.float()


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype scoring feeds ``model``: float64 when its weights are float64 (a model trained
    with ``dtype: float64`` and kept in it), else float32."""
    for p in model.parameters():
        if p.is_floating_point():
            return torch.float64 if p.dtype == torch.float64 else torch.float32
    return torch.float32


def num_items(emb: Embeddings) -> int:
    """Number of items (dim 0) of a tensor or dict embedding."""
    if isinstance(emb, dict):
        return int(next(iter(emb.values())).shape[0])
    return int(emb.shape[0])


class MatchingModel(nn.Module, abc.ABC):
    """Interface every model implements (TERN, TERAN, SGRAF).

    ``forward(images, captions)`` returns the ``[B, B]`` score matrix (rows images, columns
    captions) the VSE++ loss is computed on.
    """

    kind: str = ""
    config: Any

    @abc.abstractmethod
    def encode_images(self, images: dict[str, Tensor]) -> Embeddings:
        """See the class docstring."""

    @abc.abstractmethod
    def encode_captions(self, captions: dict[str, Tensor]) -> Embeddings:
        """See the class docstring."""

    @abc.abstractmethod
    def similarity(self, img_emb: Embeddings, cap_emb: Embeddings) -> Tensor:
        """See the class docstring."""

    def forward(self, images: dict[str, Tensor], captions: dict[str, Tensor]) -> Tensor:
        return self.similarity(self.encode_images(images), self.encode_captions(captions))

    # Thin wrappers so callers can stay model-agnostic.
    @staticmethod
    def slice_images(emb: Embeddings, idx: Tensor | slice | list[int]) -> Embeddings:
        return index_embeddings(emb, idx)

    @staticmethod
    def slice_captions(emb: Embeddings, idx: Tensor | slice | list[int]) -> Embeddings:
        return index_embeddings(emb, idx)

    @staticmethod
    def concat(parts: list[Embeddings]) -> Embeddings:
        return concat_embeddings(parts)

    def global_embeddings(self, emb: Embeddings) -> Tensor | None:
        """One l2-normalised vector per item for vector search, or None (SGRAF has none)."""
        return None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


