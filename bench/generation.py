"""Generation benchmark (a script, not a test): engine speed and framework overhead.

1. Output tokens/s on the embedded SmolLM2-135M-Instruct folder, the first 8 MT-Bench
   prompts, n=4 samples, max_tokens=128, temperature 0.8, top_p 0.95, float32:
   vLLM's offline engine (:class:`pipeline.engines.base.VLLMEngine`, continuous batching)
   against Hugging Face ``generate`` (the 32 sequences in one left-padded batch,
   sampling). Printed with the ratio, plus import and engine start times.
2. Framework overhead: the real generation path with :class:`FakeEngine`
   (``build_generation_requests`` → ``run_cached`` with a ``RequestCache`` in a temp dir →
   ``make_candidates``) on 100k candidates (25k prompts × n=4), in candidates/s, cold
   (every request answered and committed) and warm (everything from the cache), with the
   time per step. ``--profile`` adds a cProfile of the cold path.

Run::

    VLLM_CPU_KVCACHE_SPACE=2 python -m bench.generation            # everything
    python -m bench.generation --skip-vllm --skip-hf --profile     # overhead only
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

N_PROMPTS = 8
N_SAMPLES = 4
MAX_TOKENS = 128
TEMPERATURE = 0.8
TOP_P = 0.95
TARGET_CPS = 20_000


def _rows(table: list[tuple[str, str, str]]) -> str:
    w0 = max(len(r[0]) for r in table)
    w1 = max(len(r[1]) for r in table)
    lines = [f"{'measure'.ljust(w0)}  {'value'.rjust(w1)}  notes", "-" * (w0 + w1 + 40)]
    lines += [f"{a.ljust(w0)}  {b.rjust(w1)}  {c}" for a, b, c in table]
    return "\n".join(lines)


def _policy():
    from schemas.config import ModelSpec, PolicyConfig

    return PolicyConfig(
        name="smollm2",
        model=ModelSpec(),
        n=N_SAMPLES,
        temperature=TEMPERATURE,
        top_p=TOP_P,
        max_tokens=MAX_TOKENS,
        seed=0,
    )


def _mtbench_requests():
    from pipeline.generation import build_generation_requests
    from pipeline.ingest.stage import ingest_prompts

    prompts = ingest_prompts("mtbench", limit=N_PROMPTS).outputs["prompts"]
    return [g.request for g in build_generation_requests(prompts, [_policy()])]


# ---------------------------------------------------------------------------- engines


def import_seconds(modules: str) -> float:
    """Wall time of ``import <modules>`` in a fresh interpreter."""
    import subprocess

    code = f"import time; t = time.perf_counter(); import {modules}; print(time.perf_counter() - t)"
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    if res.returncode != 0:
        raise SystemExit(f"import {modules} failed: {res.stderr[-2000:]}")
    return float(res.stdout.strip().splitlines()[-1])


def bench_vllm(model_dir: Path, out: list) -> float | None:
    from pipeline.engines.embedded import default_cache_dir

    out.append(("vllm: import vllm (fresh process)", f"{import_seconds('vllm'):.1f} s", ""))
    from pipeline.engines.base import ChatRequest, VLLMEngine

    t0 = time.perf_counter()
    eng = VLLMEngine(
        "smollm2",
        str(model_dir),
        dtype="float32",
        max_model_len=2048,
        cache_dir=default_cache_dir(),
    )
    out.append(
        (
            "vllm: engine start (LLM())",
            f"{time.perf_counter() - t0:.1f} s",
            f"float32, enforce_eager, KV cache {os.environ.get('VLLM_CPU_KVCACHE_SPACE')} GiB",
        )
    )
    try:
        eng.complete([ChatRequest(messages=(("user", "hi"),), max_tokens=4)])  # warm-up
        reqs = _mtbench_requests()
        t0 = time.perf_counter()
        comps = eng.complete(reqs)
        dt = time.perf_counter() - t0
    finally:
        eng.close()
    errors = [c.error for c in comps if c.error]
    if errors:
        raise SystemExit(f"vLLM errors: {errors[:3]}")
    toks = sum(sum(c.n_output_tokens) for c in comps)
    tps = toks / dt
    out.append(
        (
            "vllm: output tokens/s",
            f"{tps:.1f}",
            f"{toks} tokens in {dt:.1f} s ({N_PROMPTS} prompts x n={N_SAMPLES}, "
            f"<= {MAX_TOKENS} tokens)",
        )
    )
    return tps


def bench_hf(model_dir: Path, out: list, threads: int | None) -> float | None:
    out.append(
        (
            "hf: import torch, transformers (fresh process)",
            f"{import_seconds('torch, transformers'):.1f} s",
            "",
        )
    )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    out.append(("hf: model load", f"{time.perf_counter() - t0:.1f} s", ""))
    reqs = _mtbench_requests()
    texts = [
        tok.apply_chat_template(r.as_messages(), tokenize=False, add_generation_prompt=True)
        for r in reqs
        for _ in range(r.n)
    ]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    eos = {
        t
        for t in (
            [model.generation_config.eos_token_id]
            if isinstance(model.generation_config.eos_token_id, int)
            else model.generation_config.eos_token_id or []
        )
        if t is not None
    } | {tok.eos_token_id}
    torch.manual_seed(0)
    with torch.inference_mode():
        model.generate(
            **tok(texts[:2], return_tensors="pt", padding=True, add_special_tokens=False),
            max_new_tokens=4,
            do_sample=True,
            pad_token_id=tok.pad_token_id,
        )  # warm-up
        t0 = time.perf_counter()
        gen = model.generate(
            **batch,
            max_new_tokens=MAX_TOKENS,
            do_sample=True,
            temperature=TEMPERATURE,
            top_p=TOP_P,
            top_k=0,
            pad_token_id=tok.pad_token_id,
        )
        dt = time.perf_counter() - t0
    new = gen[:, batch["input_ids"].shape[1] :].tolist()
    toks = 0
    for seq in new:  # tokens up to and including the first end-of-sequence token
        n = len(seq)
        for i, t in enumerate(seq):
            if t in eos:
                n = i + 1
                break
        toks += n
    tps = toks / dt
    out.append(
        (
            "hf: output tokens/s",
            f"{tps:.1f}",
            f"{toks} tokens in {dt:.1f} s (one left-padded batch of {len(texts)}, "
            f"{torch.get_num_threads()} threads)",
        )
    )
    return tps


# ---------------------------------------------------------------------------- overhead


def _synthetic_prompts(n: int):
    from pipeline.hashing import prompt_id
    from schemas.tables import PROMPTS, from_rows

    rows = []
    for i in range(n):
        msgs = [
            {
                "role": "user",
                "content": f"Question {i}: explain topic {i % 997} in two "
                f"short paragraphs for a curious student.",
            }
        ]
        rows.append(
            {
                "prompt_id": prompt_id(msgs),
                "source_id": f"s{i}",
                "prompt": msgs,
                "source": "bench",
                "meta": None,
            }
        )
    return from_rows(rows, PROMPTS, "prompts")


def bench_overhead(n_candidates: int, batch_size: int, out: list, profile: bool) -> float:
    from pipeline.engines.base import FakeEngine, RequestCache, run_cached
    from pipeline.generation import build_generation_requests, make_candidates
    from schemas.config import ModelSpec, PolicyConfig

    n_prompts = n_candidates // N_SAMPLES
    prompts = _synthetic_prompts(n_prompts)
    pol = PolicyConfig(
        name="fake",
        model=ModelSpec(engine="fake", model="fake-policy"),
        n=N_SAMPLES,
        max_tokens=MAX_TOKENS,
        seed=0,
    )
    engine = FakeEngine(model="fake-policy")
    result = {}

    def path(cache: RequestCache) -> dict[str, float]:
        times = {}
        result["cpu0"] = time.process_time()
        t = time.perf_counter()
        greqs = build_generation_requests(prompts, [pol])
        times["build_generation_requests"] = time.perf_counter() - t
        t = time.perf_counter()
        comps, stats = run_cached(
            [g.request for g in greqs],
            engine_kind="fake",
            model="fake-policy",
            get_engine=lambda: engine,
            cache=cache,
            batch_size=batch_size,
        )
        times["run_cached"] = time.perf_counter() - t
        t = time.perf_counter()
        res = make_candidates(greqs, comps)
        times["make_candidates"] = time.perf_counter() - t
        result["kept"] = res.counts.kept
        result["stats"] = stats
        result["cpu"] = time.process_time() - result["cpu0"]
        return times

    with tempfile.TemporaryDirectory(prefix="prefcurate-bench-") as tmp:
        cache = RequestCache(Path(tmp) / "requests.sqlite")
        prof = cProfile.Profile() if profile else None
        if prof:
            prof.enable()
        cold = path(cache)
        if prof:
            prof.disable()
        cold_cpu = result["cpu"]
        assert result["stats"].made == n_prompts, result["stats"]
        kept = result["kept"]
        warm = path(cache)
        warm_cpu = result["cpu"]
        assert result["stats"].made == 0
        cache.close()
        # the fake engine's own share of run_cached, measured alone
        from pipeline.generation import build_generation_requests as bgr

        sample = [g.request for g in bgr(prompts, [pol])][:5000]
        t = time.perf_counter()
        FakeEngine().complete(sample)
        fake_per_req = (time.perf_counter() - t) / len(sample)
    cps = kept / sum(cold.values())
    wcps = kept / sum(warm.values())
    verdict = "meets" if cps >= TARGET_CPS else "BELOW"
    out.append(
        (
            "overhead: candidates/s, cold",
            f"{cps:,.0f}",
            f"{kept:,} candidates ({n_prompts:,} requests, batch_size {batch_size}) in "
            f"{sum(cold.values()):.2f} s; {verdict} the {TARGET_CPS:,}/s target",
        )
    )
    out.append(
        (
            "overhead: candidates per CPU-second, cold",
            f"{kept / cold_cpu:,.0f}",
            f"{cold_cpu:.2f} s of CPU (less sensitive to other load than wall time)",
        )
    )
    for k, v in cold.items():
        out.append((f"  cold: {k}", f"{v:.2f} s", f"{kept / v:,.0f} candidates/s"))
    out.append(
        (
            "  cold: of which FakeEngine.complete",
            f"{fake_per_req * n_prompts:.2f} s",
            f"{fake_per_req * 1e6:.0f} us per request (hashes, token counts)",
        )
    )
    out.append(
        (
            "overhead: candidates/s, warm (all cached)",
            f"{wcps:,.0f}",
            f"in {sum(warm.values()):.2f} s ({kept / warm_cpu:,.0f} per CPU-second)",
        )
    )
    for k, v in warm.items():
        out.append((f"  warm: {k}", f"{v:.2f} s", f"{kept / v:,.0f} candidates/s"))
    if prof:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(18)
        print("\ncProfile of the cold path (by own time):\n" + s.getvalue(), file=sys.stderr)
    return cps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip-vllm", action="store_true")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument(
        "--hf-threads",
        type=int,
        help="torch threads for HF generate (default: "
        "torch's choice, one per core; on a shared, oversubscribed machine 1 "
        "thread can be 3x faster than 2)",
    )
    ap.add_argument("--candidates", type=int, default=100_000)
    ap.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="run_cached batch size (generate.batch_size; the cache commits after each batch)",
    )
    ap.add_argument("--profile", action="store_true", help="cProfile the overhead path")
    ap.add_argument("--json", type=Path, help="also write the table as JSON here")
    args = ap.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out: list[tuple[str, str, str]] = [
        ("machine", f"{os.cpu_count()} cores", f"load avg {os.getloadavg()[0]:.1f} at start")
    ]
    vllm_tps = hf_tps = None
    if not (args.skip_vllm and args.skip_hf):
        from pipeline.engines.embedded import ensure_smollm2

        model_dir = ensure_smollm2()
        if not args.skip_vllm:
            vllm_tps = bench_vllm(model_dir, out)
        if not args.skip_hf:
            hf_tps = bench_hf(model_dir, out, args.hf_threads)
    if vllm_tps and hf_tps:
        out.append(("ratio vLLM / HF generate", f"{vllm_tps / hf_tps:.2f}x", "output tokens/s"))
    if not args.skip_overhead:
        bench_overhead(args.candidates, args.batch_size, out, args.profile)
    out.append(
        (
            "load avg at end",
            f"{os.getloadavg()[0]:.1f}",
            "other work on the machine skews every number above",
        )
    )
    print(_rows(out))
    if args.json:
        args.json.write_text(
            json.dumps([{"measure": a, "value": b, "notes": c} for a, b, c in out], indent=2)
        )


if __name__ == "__main__":  # vLLM spawns its engine process: keep this guard
    main()
