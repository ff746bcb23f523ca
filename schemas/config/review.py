"""Human review in Label Studio: which pairs are sent, and how the answers count."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from schemas.config.base import _Frozen

REVIEW_CRITERIA = ("contested", "flipped", "low_confidence", "disagreement", "cyclic")
HUMAN_PREFIX = "human:"  # annotator names of reviewers' votes: human:<Label Studio user id>


class ReviewConfig(_Frozen):
    """Human review in Label Studio (``prefcurate review export`` / ``import``,
    pipeline/review/): which pairs are sent, and how the answers count when they come back.
    The server is ``$LABEL_STUDIO_URL`` with the token in ``$LABEL_STUDIO_API_KEY``."""

    # what makes a pair worth a human look (any of them): label contested or contradicted
    # by the votes, flipped by denoise, posterior inside low_confidence_band or dropped
    # low_confidence, vote disagreement >= min_disagreement, a prompt with a cycle
    select: tuple[Literal[REVIEW_CRITERIA], ...] = REVIEW_CRITERIA  # type: ignore[valid-type]
    budget: int = Field(50, ge=1)  # pairs per export, most informative first
    overlap: int = Field(1, ge=1)  # people who see each pair
    low_confidence_band: tuple[float, float] = (0.3, 0.7)
    min_disagreement: float = Field(0.8, ge=0, le=1)
    seed: int = 0  # the shown order (A/B) of each pair: stable_hash(pair_id, seed)
    # the human votes of earlier reviews (VOTES Parquet files, written by review import):
    # one more vote source for the aggregation, annotators human:<id>
    votes: tuple[str, ...] = ()
    # human majorities as gold anchors: those comparisons' classes are fixed and every
    # other annotator's reliability is estimated against them first (aggregate EM)
    anchor: bool = False

    @model_validator(mode="after")
    def _band(self) -> "ReviewConfig":
        lo, hi = self.low_confidence_band
        if not 0 <= lo < 0.5 < hi <= 1:
            raise ValueError(
                f"review.low_confidence_band must be [lo, hi] with 0 <= lo < 0.5 < hi <= 1, "
                f"got {list(self.low_confidence_band)}"
            )
        return self
