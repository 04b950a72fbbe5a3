"""Evaluation of image-text matchers: Recall@K / medr / meanr (recall), NDCG@25 (ndcg), ROUGE-L and
SPICE relevance matrices (rouge)."""

from trainers.evaluation.recall import (
    CAPTIONS_PER_IMAGE,
    DirectionMetrics,
    RankResult,
    RetrievalMetrics,
    evaluate_folds,
    evaluate_protocol,
    evaluate_sims,
    i2t_ranks,
    t2i_metrics,
    t2i_ranks,
)

__all__ = [
    "CAPTIONS_PER_IMAGE",
    "DirectionMetrics",
    "RankResult",
    "RetrievalMetrics",
    "evaluate_folds",
    "evaluate_protocol",
    "evaluate_sims",
    "i2t_ranks",
    "t2i_metrics",
    "t2i_ranks",
]
