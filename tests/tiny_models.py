"""Tiny Hugging Face models built locally for tests: real loading code, no hub.

A byte-level BPE tokenizer is trained with the ``tokenizers`` library on a few sentences
(with a chat template and special tokens), and a Llama backbone with random weights
(fixed seed) is saved with ``save_pretrained`` as a normal model folder that
transformers and vLLM load like any downloaded model. head_dim is 64 (vLLM's CPU
attention supports it); the whole folder is a few hundred kB and builds in about a
second.

>>> import tempfile
>>> d = build_tiny_reward_model(tempfile.mkdtemp(), num_labels=2)
>>> from transformers import AutoConfig
>>> AutoConfig.from_pretrained(d).num_labels
2
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

SPECIAL = ["<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "Write a short poem about the sea and the wind.",
    "Two plus two equals four; two plus three equals five.",
    "I am not sure, but I think the answer is probably forty two.",
    "Sorry, I cannot help with that request.",
    "Here is a list: apples, pears, plums and cherries.",
    "def add(a, b):\n    return a + b",
    "Please explain how a reward model scores a response to a prompt.",
    "Helpful, honest and harmless answers are preferred by most users.",
]


def build_tokenizer(path: str | Path, vocab_size: int = 400):
    """Train a byte-level BPE tokenizer on :data:`CORPUS` and save it to ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        additional_special_tokens=SPECIAL[3:],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 512
    fast.save_pretrained(str(path))
    return fast


def _llama_config(tok, **kw):
    from transformers import LlamaConfig

    args = dict(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        # larger than the default 0.02 so that scores are O(1) and differ by input:
        # a wrong pooled position would show up far above a 1e-4 tolerance
        initializer_range=0.2,
        torch_dtype="float32",
    )
    args.update(kw)
    return LlamaConfig(**args)


def build_tiny_reward_model(
    path: str | Path, num_labels: int = 1, seed: int = 0, id2label: dict[int, str] | None = None
) -> Path:
    """A tiny ``LlamaForSequenceClassification`` (random weights, fixed seed) in ``path``.

    ``num_labels=1`` is a regression reward head (``problem_type="regression"`` is left
    unset, as in most published reward models). ``id2label`` names the heads.
    """
    import torch
    from transformers import LlamaForSequenceClassification

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(path)
    kw = {"num_labels": num_labels}
    if id2label:
        kw["id2label"] = {int(k): v for k, v in id2label.items()}
        kw["label2id"] = {v: int(k) for k, v in id2label.items()}
    cfg = _llama_config(tok, architectures=["LlamaForSequenceClassification"], **kw)
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(cfg).to(torch.float32).eval()
    model.save_pretrained(str(path), safe_serialization=True)
    return path


def build_tiny_causal_lm(path: str | Path, seed: int = 0) -> Path:
    """The same tiny Llama backbone as a ``LlamaForCausalLM`` (random weights) in ``path``."""
    import torch
    from transformers import LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(path)
    cfg = _llama_config(tok, architectures=["LlamaForCausalLM"], initializer_range=0.02)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(torch.float32).eval()
    model.save_pretrained(str(path), safe_serialization=True)
    return path


def train_dpo_two_steps(model, tokenizer, dataset, out_dir: str | Path, max_length: int):
    """Two DPOTrainer steps on ``dataset`` as published (CPU, batch 2, no saving); returns
    (the trainer's TrainOutput, the logged losses)."""
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(out_dir),
        max_steps=2,
        per_device_train_batch_size=2,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        max_length=max_length,
        bf16=False,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    out = trainer.train()
    return out, [h["loss"] for h in trainer.state.log_history if "loss" in h]
