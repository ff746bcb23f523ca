"""The reward models themselves: :class:`RewardScorer` (raw logits for token ids) and its
two implementations, vLLM's pooling runner and transformers, how to start the one a spec
asks for, and a model's heads: their number and labels from its config, their aspect
names."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from pipeline.engines.base import shutdown_vllm, start_vllm
from schemas.config import RewardModelSpec
from schemas.errors import ConfigError, EngineError


class RewardScorer(Protocol):
    """What the reward stage needs from a model: raw logits for token-id sequences."""

    kind: str
    model: str

    def score(self, token_ids: Sequence[Sequence[int]]) -> list[list[float]]: ...


class VLLMRewardScorer:
    """vLLM's pooling runner; ``classify`` with the activation switched off (raw logits)."""

    kind = "vllm"

    def __init__(
        self,
        model: str,
        model_path: str,
        *,
        dtype: str = "auto",
        max_model_len: int = 2048,
        engine_args: dict[str, Any] | None = None,
        cache_dir: Path | None = None,
    ):
        self.model = model
        self.llm, self.start_seconds = start_vllm(
            model,
            model_path,
            dtype,
            max_model_len,
            engine_args,
            cache_dir,
            what="reward model (runner='pooling')",
            hint=", or use engine 'transformers'",
            runner="pooling",
        )

    def score(self, token_ids: Sequence[Sequence[int]]) -> list[list[float]]:
        from vllm.pooling_params import PoolingParams

        if not token_ids:
            return []
        outs = self.llm.classify(
            [{"prompt_token_ids": list(ids)} for ids in token_ids],
            pooling_params=PoolingParams(use_activation=False),
            use_tqdm=False,
        )
        return [[float(x) for x in o.outputs.probs] for o in outs]

    def close(self) -> None:
        shutdown_vllm(self.llm)


class HFRewardScorer:
    """transformers ``AutoModelForSequenceClassification``, batched, last-token logits."""

    kind = "transformers"

    def __init__(
        self,
        model: str,
        model_path: str,
        *,
        dtype: str = "auto",
        batch_size: int = 8,
        device: str | None = None,
    ):
        import torch
        from transformers import AutoModelForSequenceClassification

        self.model = model
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype: Any = "auto"
        if dtype == "auto" and self.device == "cpu":
            torch_dtype = torch.float32
        elif dtype != "auto":
            torch_dtype = getattr(torch, dtype)
        try:
            self.net = (
                AutoModelForSequenceClassification.from_pretrained(model_path, dtype=torch_dtype)
                .to(self.device)
                .eval()
            )
        except Exception as exc:
            raise EngineError(
                f"transformers could not load reward model '{model}' "
                f"({model_path}): {type(exc).__name__}: {exc}"
            ) from exc
        head = getattr(self.net, "score", None)
        self._head = head if isinstance(head, torch.nn.Module) else None
        cfg = (
            self.net.config.get_text_config()
            if hasattr(self.net.config, "get_text_config")
            else self.net.config
        )
        if cfg.pad_token_id is None:  # only transformers' own pooling reads it; we don't
            cfg.pad_token_id = 0
            self.net.config.pad_token_id = 0
        self._pad = int(cfg.pad_token_id)

    def score(self, token_ids: Sequence[Sequence[int]]) -> list[list[float]]:
        import torch

        out: list[list[float] | None] = [None] * len(token_ids)
        order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
        bs = self.batch_size if self._head is not None else 1
        with torch.inference_mode():
            for start in range(0, len(order), bs):
                idx = order[start : start + bs]
                width = max(len(token_ids[i]) for i in idx)
                ids = torch.full((len(idx), width), self._pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    n = len(token_ids[i])
                    ids[row, :n] = torch.tensor(list(token_ids[i]), dtype=torch.long)
                    mask[row, :n] = 1
                ids, mask = ids.to(self.device), mask.to(self.device)
                if self._head is None:
                    logits = self.net(input_ids=ids, attention_mask=mask).logits
                else:
                    captured: dict[str, torch.Tensor] = {}
                    hook = self._head.register_forward_hook(
                        lambda _m, _i, o: captured.__setitem__("x", o)
                    )
                    try:
                        self.net(input_ids=ids, attention_mask=mask)
                    finally:
                        hook.remove()
                    per_token = captured["x"]  # [batch, seq, num_labels]
                    last = mask.sum(dim=1) - 1
                    logits = per_token[torch.arange(len(idx), device=per_token.device), last]
                for row, i in enumerate(idx):
                    out[i] = [float(x) for x in logits[row].float().cpu()]
        return out  # type: ignore[return-value]


def load_reward_model(
    spec: RewardModelSpec, model_path: str | None = None, cache_dir: Path | None = None
) -> RewardScorer:
    """Start the scorer ``spec`` asks for (vLLM pooling runner or transformers)."""
    path = model_path or spec.model
    if spec.engine == "vllm":
        return VLLMRewardScorer(
            spec.model,
            path,
            dtype=spec.dtype,
            max_model_len=spec.max_model_len,
            engine_args=spec.engine_args,
            cache_dir=cache_dir,
        )
    return HFRewardScorer(spec.model, path, dtype=spec.dtype, batch_size=spec.batch_size)


def model_heads(model_path: str) -> tuple[int, dict[Any, str]]:
    """(num_labels, id2label) from a model folder's config, without loading weights."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_path)
    return int(cfg.num_labels), dict(getattr(cfg, "id2label", None) or {})


def aspect_names(
    num_labels: int, id2label: dict[Any, str] | None, override: Sequence[str] | None = None
) -> list[str]:
    """Aspect names of a model's heads: ``reward``, id2label names, or ``head_<i>``."""
    if override is not None:
        if len(override) != num_labels:
            raise ConfigError(
                f"reward model has {num_labels} head(s) but {len(override)} "
                f"aspect name(s) were given ({list(override)}); give one name "
                f"per head or leave 'aspects' unset"
            )
        return list(override)
    if num_labels == 1:
        return ["reward"]
    labels = {int(k): v for k, v in (id2label or {}).items()}
    names = [
        re.sub(r"[^a-z0-9]+", "_", str(labels.get(i, "")).lower()).strip("_")
        for i in range(num_labels)
    ]
    if (
        all(names)
        and len(set(names)) == num_labels
        and not any(re.fullmatch(r"label_\d+", n) for n in names)
    ):
        return names
    return [f"head_{i}" for i in range(num_labels)]
