"""TERN (Messina et al., ICPR 2020): two independent transformer encoders and a cosine score.

Text: BERT (first 6 layers, fine-tuned) → ``cap_proj`` → ``transformer_encoder_1`` → [CLS] → l2norm.
Image: I-CLS + regions → box MLP → 4-layer transformer at d = 2048 → ``img_proj`` →
``transformer_encoder_1`` (shared with the text) → I-CLS → l2norm. Score = dot product.
The branches never interact, so images and captions are embedded separately (the point of TERN).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from trainers.models.common import (
    BertTextEncoder,
    MatchingModel,
    VisualTransformerEncoder,
    check_image_batch,
    l2norm,
    length_mask,
    prepend_image_cls,
    run_stack,
    transformer_stack,
)
from trainers.models.spec import ModelSpec


@dataclass
class TernConfig:
    """TERN sizes; defaults are the released ``configs/tern.yaml``."""

    bert: str = "bert-base-uncased"
    """BERT weights: a local directory (config.json + weights) or a hub id."""
    bert_layers: int = 6
    """Keep the first N BERT layers (``extraction-hidden-layer``)."""
    bert_config: dict[str, Any] | None = None
    """BERT architecture; filled in when the model is built so loading needs no hub access."""
    feature_dim: int = 2048
    visual_layers: int = 4
    visual_dropout: float = 0.1
    embed_size: int = 1024
    layers: int = 2
    """Layers of the top transformer(s) at ``embed_size``."""
    heads: int = 4
    ff_dim: int = 2048
    dropout: float = 0.1
    shared_transformer: bool = True
    """One top transformer for both modalities (TERN: yes; TERAN: no by default)."""


class TransformerEncoders(MatchingModel):
    """The encoders TERN and TERAN share: token-level outputs of both branches."""

    config: TernConfig

    def __init__(self, config: TernConfig):
        super().__init__()
        self.txt_enc = BertTextEncoder(config.bert, config.bert_layers, config.bert_config)
        # Record the architecture so a saved config rebuilds the model offline.
        config.bert_config = self.txt_enc.bert_config()
        self.config = config
        self.img_enc = VisualTransformerEncoder(config.feature_dim, config.visual_layers,
                                                heads=config.heads, ff_dim=config.ff_dim,
                                                dropout=config.visual_dropout)
        self.img_proj = nn.Linear(config.feature_dim, config.embed_size)
        self.cap_proj = nn.Linear(self.txt_enc.hidden_size, config.embed_size)
        self.transformer_encoder_1 = transformer_stack(config.embed_size, config.layers,
                                                       heads=config.heads, ff_dim=config.ff_dim,
                                                       dropout=config.dropout)
        if not config.shared_transformer:
            self.transformer_encoder_2 = transformer_stack(config.embed_size, config.layers,
                                                           heads=config.heads,
                                                           ff_dim=config.ff_dim,
                                                           dropout=config.dropout)

    def image_tokens(self, images: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``([B, K+1, E] outputs, [B, K+1] valid)``; position 0 is the I-CLS."""
        check_image_batch(images, self.config.feature_dim, need_geometry=True)
        # Stores may hold float16 features; compute in the weights' dtype (float32 unless cast).
        weight = self.img_proj.weight
        feats, geom, valid = prepend_image_cls(
            images["features"].to(device=weight.device, dtype=weight.dtype),
            images["geometry"].to(device=weight.device, dtype=weight.dtype),
            images["num_regions"].to(weight.device))
        x = self.img_proj(self.img_enc(feats, geom, valid))
        top = self.transformer_encoder_1 if self.config.shared_transformer \
            else self.transformer_encoder_2
        return run_stack(top, x, valid), valid

    def caption_tokens(self, captions: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``([B, L, E] outputs, [B, L] valid)``; position 0 is [CLS]."""
        device = self.cap_proj.weight.device
        ids = captions["bert_ids"].to(device)
        lengths = captions["bert_lengths"].to(device)
        valid = length_mask(lengths, ids.shape[1])
        x = self.cap_proj(self.txt_enc(ids, lengths))
        return run_stack(self.transformer_encoder_1, x, valid), valid


class TERN(TransformerEncoders):
    """TERN: global I-CLS / T-CLS vectors, l2-normalised; score = cosine."""

    kind = "tern"

    def __init__(self, config: TernConfig | None = None):
        super().__init__(config or TernConfig())

    def encode_images(self, images: dict[str, Tensor]) -> Tensor:
        tokens, _ = self.image_tokens(images)
        return l2norm(tokens[:, 0])

    def encode_captions(self, captions: dict[str, Tensor]) -> Tensor:
        tokens, _ = self.caption_tokens(captions)
        return l2norm(tokens[:, 0])

    def similarity(self, img_emb: Tensor, cap_emb: Tensor) -> Tensor:
        return img_emb @ cap_emb.to(img_emb).t()

    def global_embeddings(self, emb: Tensor) -> Tensor:
        return emb


def _preset(dataset: str) -> dict[str, Any]:
    # configs/tern.yaml: bs 80, Adam 2e-6, StepLR(30, 0.1) + LinearWarmup(1000), 30 epochs, val 500.
    # TERN's code selects by t2i R@K sum; we keep rsum by default (issue), t2i_rsum is one key away.
    return dict(batch_size=80, epochs=30, lr=2e-6, lr_step_epochs=30, warmup_iters=1000,
                val_every=500)


SPECS = (ModelSpec(name="tern", kind=TERN.kind, config_class=TernConfig, model_class=TERN,
                   needs=frozenset({"bert", "geometry"}), global_vectors=True, preset=_preset),)


__all__ = ["SPECS", "TERN", "TernConfig", "TransformerEncoders"]
