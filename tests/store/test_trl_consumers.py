"""A published version trains TRL's DPOTrainer and RewardTrainer as is, and loads with
datasets (save_to_disk and parquet) and polars. Tiny locally built models, no hub."""

from __future__ import annotations

from pathlib import Path

import datasets
import polars as pl
import pytest

from flows.curate import curate
from schemas.config import load_config

CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} </s>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture(scope="module")
def version(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trl")
    cfg = load_config(
        Path(__file__).parents[2] / "data/examples/pairs_votes.yaml", [f"data_root={root}"]
    )
    summary = curate(cfg.model_dump(mode="json"))
    assert summary["rows"] >= 4
    return Path(summary["path"])


@pytest.fixture(scope="module")
def tokenizer(version):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    df = pl.read_parquet(version / "data.parquet")
    texts = [
        m["content"]
        for col in ("prompt", "chosen", "rejected")
        for msgs in df[col].to_list()
        for m in msgs
    ]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    special = ["<unk>", "<pad>", "<s>", "</s>", "<user>", "<assistant>", "<system>"]
    tok.train_from_iterator(texts * 2, trainers.WordLevelTrainer(special_tokens=special))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _llama_config(tokenizer, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **kw,
    )


def _tiny_lm(tokenizer, tmp_path):
    """A seeded tiny Llama saved with the tokenizer and loaded back from its folder (the
    trainers load their reference model from the path)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    path = tmp_path / "tiny-lm"
    LlamaForCausalLM(_llama_config(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return LlamaForCausalLM.from_pretrained(path)


def test_loads_with_datasets_parquet_and_polars(version):
    ds = datasets.load_from_disk(str(version / "data"))
    pq = datasets.load_dataset(
        "parquet",
        data_files=str(version / "data.parquet"),
        split="train",
        cache_dir=str(version.parent.parent / ".hf"),
    )
    lazy = pl.scan_parquet(version / "data.parquet").select("margin", "p_hat").collect()
    assert ds.num_rows == pq.num_rows == lazy.height >= 1
    assert {"prompt", "chosen", "rejected", "margin"} <= set(ds.column_names)
    assert ds[0]["prompt"][0]["role"] in ("user", "system")


def test_dpo_trainer_trains_on_published_version(version, tokenizer, tmp_path):
    import torch
    from tiny_models import train_dpo_two_steps

    model = _tiny_lm(tokenizer, tmp_path)
    ds = datasets.load_from_disk(str(version / "data"))
    out, losses = train_dpo_two_steps(model, tokenizer, ds, tmp_path / "dpo", 128)
    assert out.global_step == 2
    assert losses and all(torch.isfinite(torch.tensor(losses)))


def test_reward_trainer_uses_margin(version, tokenizer, tmp_path):
    import torch
    from transformers import LlamaForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    torch.manual_seed(0)
    model = LlamaForSequenceClassification(_llama_config(tokenizer, num_labels=1))
    ds = datasets.load_from_disk(str(version / "data"))
    assert "margin" in ds.column_names and any(m > 0 for m in ds["margin"])
    args = RewardConfig(
        output_dir=str(tmp_path / "rm"),
        max_steps=2,
        per_device_train_batch_size=2,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        max_length=128,
        bf16=False,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
    # the margin column survives preprocessing and reaches the loss
    assert "margin" in trainer.train_dataset.column_names
    out = trainer.train()
    assert out.global_step == 2


def test_kto_trainer_trains_on_the_trl_kto_export(version, tokenizer, tmp_path):
    """`prefcurate export --format trl-kto` writes unpaired rows TRL's KTOTrainer reads as
    is (conversational prompt / completion, boolean label)."""
    import torch
    from trl import KTOConfig, KTOTrainer

    from pipeline.store.export import export_version

    root = version.parent.parent.parent
    res = export_version(root, f"{version.parent.name}@{version.name}", "trl-kto")
    ds = datasets.load_from_disk(str(Path(res["path"]) / "data"))
    assert set(ds["label"]) == {True, False}
    model = _tiny_lm(tokenizer, tmp_path)
    args = KTOConfig(
        output_dir=str(tmp_path / "kto"),
        max_steps=1,
        per_device_train_batch_size=4,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        max_length=128,
        bf16=False,
    )
    trainer = KTOTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
    out = trainer.train()
    assert out.global_step == 1
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
