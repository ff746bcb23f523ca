"""Scenario matrix for the denoiser: every method against an oracle ceiling, per cell.

For each scenario of ``bench/scenarios.py`` (documented generators with known truth) ×
noise level × seed, simulates a dataset, runs the reference methods and the product's
real path on it, and prints per cell (mean ± std over seeds) how much of the truth each
method recovers, then a summary over the matrix (DESIGN.md §5, "Evaluating a denoiser
honestly"; issue 12).

Methods — every posterior-based one decides with the same rule on q = P(file label right):
flip if q < ``FLIP_BELOW`` (0.3), drop if q < ``DROP_BELOW`` (0.7), else keep:

- ``majority``: the label counted as one vote; flip when most votes contradict it, drop
  an exact tie (tie votes count for neither side); p̂ = the Jeffreys vote share.
- ``plain_ds``: one-pass Dawid–Skene (``pipeline.aggregate.em.fit_dawid_skene``) in the
  canonical (a, b) frame, the label as one more annotator, a tie vote as the non-class
  label 2, every annotator name (judge × order) its own annotator.
- ``crowdkit_ds``, ``crowdkit_mace``, ``crowdkit_glad``: crowd-kit's DawidSkene, MACE
  (``n_restarts=1``: the default 10 restarts cost 10× the time for the same labels here)
  and GLAD (defaults; by far the slowest — a Python call per task in every E-step — so it
  runs on the first ``--glad-seeds`` seeds of a cell only, default 1), the label as an
  annotator, q from their ``probas_``. **Tie votes are left out for these three** (they
  would be a third class).
- ``default_rule``: the product's path with ``denoise.flip_below`` / ``drop_below`` set to
  the bench's rule (0.3 / 0.7): the product's estimator under the references' decision
  rule, so that thresholds and estimator can be told apart.
- ``oracle``: the Bayes posterior from the generator's parameters (``scenarios.oracle``).
- ``default``: the product's real path with its default config (:func:`run_default`).

In ``judges_only`` there is no file label: every method orients each pair itself
(q = max(P(a), P(b)); drop if q < ``DROP_BELOW``; ``default``: as the flow orients it), and
only orientation accuracy, kept share and Spearman are reported (no noisy-pair F1).

Metrics per method and cell: ``acc`` (final orientation vs truth over the published —
kept or flipped — pairs), ``f1`` (flagged = flipped or dropped, against the truly wrong
labels), ``clean_kept`` (share of the clean pairs published unchanged), ``kept`` (share
published), ``flipped``, ``rho`` (Spearman between the published p̂ of the final
orientation and its true vote share, over the published pairs; the oracle's p̂ is its
posterior, ``rho_bayes`` its posterior mean of the share) and ``rho_raw`` (the same for
the raw Jeffreys vote share, label included, on the same pairs). Training check
(``--no-train`` skips it): a Bradley–Terry head (logistic regression on e_chosen −
e_rejected, L2, 25 Newton steps) trained on (a) the raw noisy pairs, (b) the default's
published pairs with their weights, (c) the same with the margin in the loss
(−log σ(r_w − r_l − m)), (d) the clean pairs; held-out pair accuracy on fresh clean pairs of
the same generator, and the share of the (a) → (d) gap that (b) and (c) close.

Usage::

    python bench/noise_matrix.py                 # 10 scenarios × noise 0.1–0.4 × 3 seeds
    python bench/noise_matrix.py --quick         # 800 pairs, noise 0.2 / 0.4, 1 seed, no GLAD
    python bench/noise_matrix.py --json > m.json # one JSON document on stdout, logs on stderr
    python bench/noise_matrix.py --scenarios dense ties --noise 0.3 --seeds 5 --pairs 2000
    python bench/noise_matrix.py --set denoise.drop_below=0.7   # try a product setting
    python bench/noise_matrix.py --check-flow    # the real Prefect flow vs run_default

``--jobs`` (default 2) runs cells in that many processes (one BLAS / torch thread each).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import scenarios as S  # noqa: E402
from bench.scenarios import Sim  # noqa: E402

FLIP_BELOW = 0.3  # q = P(label right) < FLIP_BELOW: flip
DROP_BELOW = 0.7  # FLIP_BELOW <= q < DROP_BELOW: drop; else keep
KEEP, FLIP, DROP = 0, 1, 2
DECISIONS = {"keep": KEEP, "flip": FLIP, "drop": DROP}
METHODS = (
    "majority",
    "plain_ds",
    "crowdkit_ds",
    "crowdkit_mace",
    "crowdkit_glad",
    "oracle",
    "default",
    "default_rule",
)
FULL = {"pairs": 1500, "seeds": 3, "noise": (0.1, 0.2, 0.3, 0.4), "glad_seeds": 1}
QUICK = {"pairs": 800, "seeds": 1, "noise": (0.2, 0.4), "glad_seeds": 0}
TEST_PAIRS = 3000  # held-out clean pairs for the training check


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- results


@dataclass
class Result:
    """One method's final state of every pair (aligned with the simulation's pairs)."""

    decision: np.ndarray  # KEEP / FLIP / DROP against the file's label (judges_only: KEEP/DROP)
    final_a: np.ndarray  # published orientation: position a is chosen
    p_hat: np.ndarray  # published P(final chosen ≻ rejected); NaN where dropped
    weight: np.ndarray | None = None
    margin: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def published(self) -> np.ndarray:
        return self.decision != DROP


def from_posterior(sim: Sim, p_a: np.ndarray, info: dict[str, Any] | None = None) -> Result:
    """The shared decision rule on a posterior P(a ≻ b) per pair."""
    p_a = np.clip(np.nan_to_num(np.asarray(p_a, dtype=np.float64), nan=0.5), 0.0, 1.0)
    if sim.has_label:
        q = np.where(sim.label_a, p_a, 1.0 - p_a)
        dec = np.where(q < FLIP_BELOW, FLIP, np.where(q < DROP_BELOW, DROP, KEEP))
        final_a = np.where(dec == FLIP, ~sim.label_a, sim.label_a)
        p_hat = np.where(dec == KEEP, q, np.where(dec == FLIP, 1.0 - q, np.nan))
    else:
        q = np.maximum(p_a, 1.0 - p_a)
        dec = np.where(q < DROP_BELOW, DROP, KEEP)
        final_a = p_a > 0.5
        p_hat = np.where(dec == KEEP, q, np.nan)
    return Result(dec, final_a, p_hat, info=info or {})


def _counts_with_label(sim: Sim) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_a, n_b, n_t = sim.vote_counts()
    if sim.has_label:
        n_a, n_b = n_a + sim.label_a, n_b + ~sim.label_a
    return n_a, n_b, n_t


def raw_share_a(sim: Sim) -> np.ndarray:
    """The raw Jeffreys vote share of position a, the label's vote included (the
    product's p̂ formula with a = ½)."""
    n_a, n_b, n_t = _counts_with_label(sim)
    return (n_a + 0.5 * n_t + 0.5) / (n_a + n_b + n_t + 1.0)


# ---------------------------------------------------------------------------- methods


def method_majority(sim: Sim) -> Result:
    n_a, n_b, _ = _counts_with_label(sim)
    share = raw_share_a(sim)
    if sim.has_label:
        n_lab = np.where(sim.label_a, n_a, n_b)
        n_oth = np.where(sim.label_a, n_b, n_a)
        dec = np.where(n_oth > n_lab, FLIP, np.where(n_oth == n_lab, DROP, KEEP))
        final_a = np.where(dec == FLIP, ~sim.label_a, sim.label_a)
    else:
        dec = np.where(n_a == n_b, DROP, KEEP)
        final_a = n_a > n_b
    p_hat = np.where(dec == DROP, np.nan, np.where(final_a, share, 1.0 - share))
    return Result(dec, final_a, p_hat)


def _coded_votes(
    sim: Sim, with_label: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(item, annotator code, label code 0 a / 1 b / 2 tie, annotator names), the file's
    label as annotator ``source`` when there is one."""
    names = sim.vote_names()
    uniq, acode = np.unique(np.array(names, dtype=object), return_inverse=True)
    # in the product's canonical frame (what a method sees; = positions unless swapped)
    item, lab, ann = sim.v_item, S.canonical_codes(sim, sim.v_item, sim.v_code), acode.reshape(-1)
    annot_names = [str(u) for u in uniq]
    if with_label and sim.has_label:
        item = np.concatenate([item, np.arange(sim.n)])
        ann = np.concatenate([ann, np.full(sim.n, len(annot_names))])
        lab = np.concatenate([lab, np.where(sim.label_a != sim.swapped, S.CODE_A, S.CODE_B)])
        annot_names.append(S.LABEL_ANNOTATOR)
    return item.astype(np.int64), ann.astype(np.int64), lab.astype(np.int64), annot_names


def method_plain_ds(sim: Sim) -> Result:
    from pipeline.aggregate.em import fit_dawid_skene

    item, ann, lab, names = _coded_votes(sim)
    res = fit_dawid_skene(
        item, ann, lab, n_items=sim.n, n_annotators=len(names), n_classes=2, n_labels=3
    )
    return from_posterior(
        sim,
        _to_positions(sim, res.posterior[:, 0]),
        {"n_iter": res.n_iter, "converged": bool(res.converged)},
    )


def _to_positions(sim: Sim, p_canonical_a: np.ndarray) -> np.ndarray:
    """P(canonical a ≻ b) → P(position a ≻ b)."""
    return np.where(sim.swapped, 1.0 - p_canonical_a, p_canonical_a)


def method_crowdkit(sim: Sim, which: str) -> Result:
    import pandas as pd
    from crowdkit.aggregation import GLAD, MACE, DawidSkene

    item, ann, lab, names = _coded_votes(sim)
    keep = lab != S.CODE_TIE  # crowd-kit would take a tie for a third class
    df = pd.DataFrame(
        {"task": item[keep], "worker": np.array(names, dtype=object)[ann[keep]], "label": lab[keep]}
    )
    model = {
        "crowdkit_ds": lambda: DawidSkene(n_iter=100),
        "crowdkit_mace": lambda: MACE(n_restarts=1, n_iter=50, random_state=sim.seed),
        "crowdkit_glad": lambda: GLAD(),
    }[which]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(df)
    p_a = np.full(sim.n, 0.5)
    probas = getattr(model, "probas_", None)
    if probas is not None:
        pr = probas.reindex(columns=[S.CODE_A, S.CODE_B]).fillna(0.0)
        tot = pr.sum(axis=1).to_numpy()
        idx = pr.index.to_numpy(dtype=np.int64)
        p_a[idx] = np.where(tot > 0, pr[S.CODE_A].to_numpy() / np.maximum(tot, 1e-300), 0.5)
        src = "probas"
    else:  # hard labels only
        lbl = model.labels_
        p_a[lbl.index.to_numpy(dtype=np.int64)] = (lbl.to_numpy() == S.CODE_A).astype(float)
        src = "labels"
    return from_posterior(
        sim, _to_positions(sim, p_a), {"q_from": src, "ties_left_out": int((~keep).sum())}
    )


def method_oracle(sim: Sim, post: S.Posterior) -> Result:
    r = from_posterior(sim, post.p_a)
    share = np.where(r.final_a, post.share_a, 1.0 - post.share_a)
    r.info["bayes_share"] = np.where(r.published, share, np.nan)
    return r


# --------------------------------------------------------------- the product's real path


class Outcomes(dict):
    """Per input id: ``decision`` (keep / flip / drop), ``reason``, ``final_a`` (published
    orientation, position a chosen), ``p_hat``, ``weight``, ``margin``; ``.info`` holds the
    stages' info (aggregation method, label-correlated annotators, denoise info, drop
    reasons, frame alignment); ``.tables`` the first pass's margins pairs, denoise pairs
    and dropped rows."""

    info: dict[str, Any]
    tables: dict[str, Any]


_INGESTED: dict[str, Any] = {}  # the last ingested simulation (one entry)


def _prefect_home() -> None:
    """Importing prefect (flows.curate) creates its home folder: a temporary one, removed
    at exit, unless the caller set PREFECT_HOME."""
    if "PREFECT_HOME" not in os.environ:
        import atexit
        import shutil

        home = tempfile.mkdtemp(prefix="prefcurate-matrix-prefect-")
        atexit.register(shutil.rmtree, home, True)
        os.environ["PREFECT_HOME"] = home


def _embeddings_enabled(cfg: Any) -> bool:
    """The flow's own rule (:meth:`schemas.config.RunConfig.embeddings_on`)."""
    return bool(cfg.embeddings_on())


def default_config(sim: Sim, sets: tuple[str, ...] | list[str] = ()) -> Any:
    """``RunConfig`` defaults plus input.kind (pairs, or prompts without a file label),
    input.limit = None and no judge (the votes are given), then the ``--set``-style
    overrides ``sets`` (``denoise.drop_below=0.7``), validated like the CLI's."""
    from schemas.config import load_config

    kind = "pairs" if sim.has_label else "prompts"
    return load_config(None, [f"input.kind={kind}", "input.limit=null", "judge.judges=[]", *sets])


def run_default(
    sim: Sim,
    cfg: Any = None,
    embeddings: str = "flow",
    human: list[tuple[int, str, bool]] | None = None,
) -> Outcomes:
    """The product's path on ``sim`` with ``cfg`` (default: :func:`default_config`), the
    same functions and arguments as flows/curate.py: ingest_pairs (a JSONL pairs file
    written to a temporary folder) → aggregate_votes (``pipeline.chain.aggregate_kwargs``)
    → compute_margins (+ similarity when embeddings are on) → denoise_pairs (label_source,
    p_model = ``pipeline.chain.denoise_p_model``, the simulated embeddings aligned like the
    flow, when peer review would run) → build_pairs. ``--check-flow`` compares it with the
    real flow. Without a file label
    (``judges_only``) it starts at aggregate with the VOTES table of
    :func:`bench.scenarios.votes_table`, as the judge stage would write it.

    ``embeddings``: ``flow`` (whether the flow would embed: ``cfg.embeddings_on()``),
    ``always`` or ``never``. ``human``: reviewers' votes added to the votes, as the flow's
    review stage adds them — (pair index, annotator, says position a); with
    ``review.anchor`` they are gold anchors (``pipeline.chain.gold_prefix``). The first
    pass's tables a review picks from are in ``Outcomes.tables`` (margins pairs, denoise
    pairs, dropped rows).
    """
    import pyarrow as pa

    from pipeline.aggregate.aggregation import aggregate_votes
    from pipeline.aggregate.length import candidate_lengths
    from pipeline.chain import aggregate_kwargs, denoise_p_model, gold_prefix
    from pipeline.denoise.denoise import denoise_pairs
    from pipeline.embeddings import aligned_embeddings, cosine_similarity_pairs, embeddings_table
    from pipeline.ingest.stage import ingest_pairs
    from pipeline.margins import compute_margins, with_similarity
    from pipeline.pairs import build_pairs

    cfg = cfg if cfg is not None else default_config(sim)
    if cfg.gpm.enabled or cfg.select.budget is not None or cfg.judge.judges:
        raise NotImplementedError(
            "run_default covers the pairs / given-votes path: no judges, gpm or select budget"
        )
    info: dict[str, Any] = {}
    t0 = time.perf_counter()
    # position of each candidate: (pair index, is position a)
    if sim.has_label and cfg.input.kind == "pairs":
        key = (id(sim), cfg.input.model_dump_json(exclude={"path"}))
        if _INGESTED.get("key") == key and _INGESTED.get("sim") is sim:
            ing = _INGESTED["ing"]  # the same file ingested again (default_rule): reuse
        else:
            with tempfile.TemporaryDirectory(prefix="prefcurate-matrix-") as d:
                path = S.write_pairs_jsonl(sim, Path(d) / f"{S.LABEL_ANNOTATOR}.jsonl")
                inp = cfg.input.model_copy(update={"path": str(path)})
                ing = ingest_pairs(inp.path, source=inp.source, limit=inp.limit)
            _INGESTED.update(key=key, sim=sim, ing=ing)
        prompts = ing.outputs["prompts"]
        votes = ing.outputs["votes"]
        cands = ing.outputs["candidates"]
        lengths = candidate_lengths(cands)
        labels = sorted(set(prompts.column("source").to_pylist()))
        row = {s: i for i, s in enumerate(sim.ids)}
        c_sid = [row[s] for s in cands.column("source_id").to_pylist()]
        c_is_chosen = np.array([p == "given:chosen" for p in cands.column("policy").to_pylist()])
        c_pos_a = np.where(c_is_chosen, sim.label_a[c_sid], ~sim.label_a[c_sid])
        pos = dict(zip(cands.column("candidate_id").to_pylist(), zip(c_sid, c_pos_a.tolist())))
        prompt_row = dict(
            zip(
                prompts.column("prompt_id").to_pylist(),
                [row[s] for s in prompts.column("source_id").to_pylist()],
            )
        )
        # is the product's canonical a the simulation's position a? (position bias, imbalance)
        lab = votes.filter(np.array([a in labels for a in votes.column("annotator").to_pylist()]))
        la = np.array([v == "a" for v in lab.column("verdict").to_pylist()])
        li = np.array([row[s] for s in lab.column("source_id").to_pylist()])
        want = sim.label_a[li] != sim.swapped[li]  # the canonical a the simulation asked for
        info["frame_aligned"] = float(np.mean(la == want)) if li.size else None
        label_source: Any = labels[0] if len(labels) == 1 else None
    else:
        votes = S.votes_table(sim)
        cands = None
        labels = []
        ca, cb = S.candidate_ids(sim)
        sw = sim.swapped.tolist()
        pos = {c: (i, not sw[i]) for i, c in enumerate(ca)} | {
            c: (i, sw[i]) for i, c in enumerate(cb)
        }
        prompt_row = {f"prompt-{s}": i for i, s in enumerate(sim.ids)}
        label_source = None
        info["frame_aligned"] = 1.0
        len_a = np.where(sim.swapped, sim.len_b, sim.len_a)  # canonical a / b
        len_b = np.where(sim.swapped, sim.len_a, sim.len_b)
        lengths = pl.DataFrame(
            {"candidate_id": ca + cb, "length": np.concatenate([len_a, len_b]).astype(np.float64)}
        )
    emb_on = {"flow": None, "always": True, "never": False}[embeddings]
    if emb_on is None:
        emb_on = _embeddings_enabled(cfg)
    cand_emb = prompt_emb = None
    if emb_on:
        cids = list(pos)
        mat = np.stack(
            [sim.emb_a[pos[c][0]] if pos[c][1] else sim.emb_b[pos[c][0]] for c in cids]
        ).astype(np.float32)
        cand_emb = embeddings_table(cids, mat, "candidate_id")
        pids = list(prompt_row)
        prompt_emb = embeddings_table(
            pids, sim.emb_prompt[[prompt_row[p] for p in pids]].astype(np.float32), "prompt_id"
        )
    info["embeddings"] = bool(emb_on)

    if human:
        votes = pa.concat_tables([votes, _human_votes(human, pos, prompt_of(cands, votes))])
    # aggregate_task: the arguments come from pipeline.chain, as in the flow
    agg = aggregate_votes(
        votes,
        label_annotators=set(labels),
        lengths=lengths,
        gold_prefix=gold_prefix(cfg),
        **aggregate_kwargs(cfg.aggregate),
    )
    comps = agg.outputs["comparisons"]
    # margins_task
    mar = compute_margins(comps, agg.outputs["scores"], cfg.margins)
    pairs_t = mar.outputs["pairs"]
    if cand_emb is not None:
        sims = cosine_similarity_pairs(cand_emb, pairs_t)
        pairs_t = with_similarity(pairs_t, sims, cfg.margins.indistinguishable_tau)
    # denoise_task
    dcfg = cfg.denoise
    posterior = dcfg.method == "posterior"
    peer_review = dcfg.peer_review is True or (dcfg.peer_review is None and not posterior)
    kw: dict[str, Any] = {
        "label_source": label_source if cfg.input.kind == "pairs" else [None] * pairs_t.num_rows
    }
    if posterior or dcfg.judge_posterior:  # (the flow's use_agg)
        p_model = denoise_p_model(pairs_t, comps, dcfg)
        if p_model is not None:
            kw["p_model"] = p_model
    if cand_emb is not None and peer_review and pairs_t.num_rows:
        kw["emb_chosen"] = aligned_embeddings(cand_emb, pairs_t.column("chosen_id").to_pylist())
        kw["emb_rejected"] = aligned_embeddings(cand_emb, pairs_t.column("rejected_id").to_pylist())
        kw["emb_prompt"] = aligned_embeddings(
            prompt_emb, pairs_t.column("prompt_id").to_pylist(), "prompt_id"
        )
    den = denoise_pairs(pairs_t, cfg.denoise, cfg.margins, **kw)
    sel = build_pairs(den.outputs["pairs"], cfg.pairs)

    out = Outcomes()
    out.tables = {
        "margins": pairs_t,
        "denoise": den.outputs["pairs"],
        "dropped": pa.concat_tables([den.dropped, sel.dropped]),
    }
    for stage, res in (("denoise", den), ("pairs", sel)):
        for sid, why in zip(
            res.dropped.column("source_id").to_pylist(), res.dropped.column("reason").to_pylist()
        ):
            out[sid] = {
                "decision": "drop",
                "reason": f"{stage}:{why}",
                "final_a": None,
                "p_hat": None,
                "weight": None,
                "margin": None,
            }
    for r in (
        sel.outputs["pairs"]
        .select(["source_id", "chosen_id", "decision", "reason", "p_hat", "weight", "margin"])
        .to_pylist()
    ):
        out[r["source_id"]] = {
            "decision": r["decision"],
            "reason": r["reason"],
            "final_a": bool(pos[r["chosen_id"]][1]),
            "p_hat": r["p_hat"],
            "weight": r["weight"],
            "margin": r["margin"],
        }
    for sid in sim.ids:  # a pair no stage accounted for (should not happen)
        out.setdefault(
            sid,
            {
                "decision": "drop",
                "reason": "missing",
                "final_a": None,
                "p_hat": None,
                "weight": None,
                "margin": None,
            },
        )
    info.update(
        {
            "aggregate_method": agg.info.get("method"),
            "judges_method": agg.info.get("judges_method"),
            "label_correlated": {
                k: v.get("z") for k, v in (agg.info.get("label_correlated") or {}).items()
            },
            "denoise": _small(den.info),
            "reasons": dict(Counter(o["reason"] or o["decision"] for o in out.values())),
            "seconds": time.perf_counter() - t0,
        }
    )
    out.info = info
    return out


def prompt_of(cands: Any, votes: Any) -> dict[str, tuple[str, str]]:
    """candidate id → (prompt_id, source_id), from the candidates table (or the votes)."""
    if cands is not None:
        return dict(
            zip(
                cands.column("candidate_id").to_pylist(),
                zip(cands.column("prompt_id").to_pylist(), cands.column("source_id").to_pylist()),
            )
        )
    out = {}
    for p, s, a, b in zip(
        *(
            votes.column(c).to_pylist()
            for c in ("prompt_id", "source_id", "candidate_a", "candidate_b")
        )
    ):
        out[a] = out[b] = (p, s)
    return out


def _human_votes(
    human: list[tuple[int, str, bool]],
    pos: dict[str, tuple[int, bool]],
    where: dict[str, tuple[str, str]],
) -> Any:
    """VOTES rows for reviewers' answers (pair index, annotator, says position a)."""
    from schemas.tables import VOTES, from_rows

    at = {v: c for c, v in pos.items()}  # (pair index, is position a) → candidate id
    rows = []
    for i, who, says_a in human:
        ca, cb = at[(i, True)], at[(i, False)]
        first, second = sorted((ca, cb))
        winner = ca if says_a else cb
        p, s = where[ca]
        rows.append(
            {
                "prompt_id": p,
                "source_id": s,
                "candidate_a": first,
                "candidate_b": second,
                "annotator": who,
                "order": None,
                "verdict": "a" if winner == first else "b",
                "prob_a": None,
                "raw_output": None,
                "parse_error": None,
            }
        )
    return from_rows(rows, VOTES, "votes")


def _small(x: Any, depth: int = 0) -> Any:
    """Stage info without long lists or deep nesting (for the report)."""
    if isinstance(x, dict):
        return {str(k): _small(v, depth + 1) for k, v in list(x.items())[:40]} if depth < 3 else "…"
    if isinstance(x, (list, tuple)):
        return [_small(v, depth + 1) for v in x] if len(x) <= 8 else f"[{len(x)} values]"
    if isinstance(x, float):
        return round(x, 4)
    return x


def method_default(
    sim: Sim,
    embeddings: str = "flow",
    shared_rule: bool = False,
    sets: tuple[str, ...] = (),
    human: list[tuple[int, str, bool]] | None = None,
) -> Result:
    """``default`` (with ``sets``, the ``--set`` overrides, if any); with ``shared_rule``
    (method ``default_rule``) the same path with the bench's thresholds
    (denoise.flip_below / drop_below = FLIP_BELOW / DROP_BELOW): the product's estimator
    under the references' decision rule."""
    cfg = default_config(
        sim,
        tuple(sets)
        + (
            (f"denoise.flip_below={FLIP_BELOW}", f"denoise.drop_below={DROP_BELOW}")
            if shared_rule
            else ()
        ),
    )
    out = run_default(sim, cfg, embeddings=embeddings, human=human)
    return result_of(sim, out)


def result_of(sim: Sim, out: Outcomes) -> Result:
    """The product's outcomes on ``sim`` as a Result (decisions, orientation, p̂, ...)."""
    rows = [out[s] for s in sim.ids]
    dec = np.array([DECISIONS[r["decision"]] for r in rows])
    fin = np.array(
        [r["final_a"] if r["final_a"] is not None else bool(la) for r, la in zip(rows, sim.label_a)]
    )
    if not sim.has_label:
        dec = np.where(dec == FLIP, KEEP, dec)  # a vote-oriented pair has no label to flip
    num = lambda k: np.array([np.nan if r[k] is None else float(r[k]) for r in rows])  # noqa: E731
    return Result(dec, fin, num("p_hat"), num("weight"), num("margin"), info=out.info)


# ---------------------------------------------------------------------------- scoring


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    ok = np.isfinite(x) & np.isfinite(y)
    x, y = np.round(x, 9), np.round(y, 9)  # equal up to float noise: a tie, not a rank
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    return float(spearmanr(x[ok], y[ok]).statistic)


def score(sim: Sim, r: Result) -> dict[str, float | None]:
    pub = r.published
    right = r.final_a == sim.better_a
    share_final = np.where(r.final_a, sim.share_a(), 1.0 - sim.share_a())
    raw = raw_share_a(sim)
    raw_final = np.where(r.final_a, raw, 1.0 - raw)
    out: dict[str, float | None] = {
        "acc": float(right[pub].mean()) if pub.any() else float("nan"),
        "kept": float(pub.mean()),
        "flipped": float((r.decision == FLIP).mean()),
        "rho": _spearman(r.p_hat[pub], share_final[pub]),
        "rho_raw": _spearman(raw_final[pub], share_final[pub]),
    }
    if sim.has_label:
        wrong = ~sim.label_right
        flagged = r.decision != KEEP
        tp = float((flagged & wrong).sum())
        prec = tp / flagged.sum() if flagged.any() else (1.0 if not wrong.any() else 0.0)
        rec = tp / wrong.sum() if wrong.any() else (1.0 if not flagged.any() else 0.0)
        out["f1"] = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        out["clean_kept"] = (
            float((r.decision[~wrong] == KEEP).mean()) if (~wrong).any() else float("nan")
        )
    else:
        out["f1"] = out["clean_kept"] = None
    if "bayes_share" in r.info:
        out["rho_bayes"] = _spearman(r.info["bayes_share"][pub], share_final[pub])
    return out


# ---------------------------------------------------------------------- training check


def fit_bt(
    d: np.ndarray,
    weight: np.ndarray | None = None,
    margin: np.ndarray | None = None,
    l2: float = 1.0,
    steps: int = 25,
) -> np.ndarray:
    """Bradley–Terry head r(e) = θ·e: minimise Σ w_i softplus(−(θ·d_i − m_i)) + ½ l2 |θ|²
    (d = e_chosen − e_rejected) with a fixed number of Newton steps."""
    n, k = d.shape
    w = np.ones(n) if weight is None else np.nan_to_num(weight, nan=0.0)
    m = np.zeros(n) if margin is None else np.nan_to_num(margin, nan=0.0)
    theta = np.zeros(k)
    for _ in range(steps):
        p = S.sigmoid(d @ theta - m)
        grad = -d.T @ (w * (1.0 - p)) + l2 * theta
        hess = (d * (w * p * (1.0 - p))[:, None]).T @ d + l2 * np.eye(k)
        theta -= np.linalg.solve(hess, grad)
    return theta


def training_check(sim: Sim, r: Result) -> dict[str, float]:
    """Held-out pair accuracy of the same BT head on raw / curated / curated+margin /
    clean pairs (module docstring)."""
    test = S.fresh_clean_pairs(sim, TEST_PAIRS)
    acc = lambda th: float(np.mean(test @ th > 0))  # noqa: E731
    d_a = sim.emb_a - sim.emb_b
    orient = lambda fa: np.where(fa[:, None], d_a, -d_a)  # noqa: E731
    if sim.has_label:
        raw_a = sim.label_a
    else:  # no label: the raw pairs are oriented by their votes, ties at random
        n_a, n_b, _ = sim.vote_counts()
        coin = np.random.default_rng(sim.seed).random(sim.n) < 0.5
        raw_a = np.where(n_a == n_b, coin, n_a > n_b)
    pub = r.published
    out = {
        "raw": acc(fit_bt(orient(raw_a))),
        "curated_w": acc(
            fit_bt(orient(r.final_a)[pub], weight=None if r.weight is None else r.weight[pub])
        ),
        "curated_margin": acc(
            fit_bt(orient(r.final_a)[pub], margin=None if r.margin is None else r.margin[pub])
        ),
        "clean": acc(fit_bt(orient(sim.better_a))),
    }
    gap = out["clean"] - out["raw"]
    out["closed_w"] = (out["curated_w"] - out["raw"]) / gap if gap > 0.002 else float("nan")
    out["closed_margin"] = (
        (out["curated_margin"] - out["raw"]) / gap if gap > 0.002 else float("nan")
    )
    return out


# ------------------------------------------------------------------------------- cells


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return None  # arrays stay out of the report
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def run_one(
    scenario: str,
    noise: float,
    seed: int,
    pairs: int,
    methods: tuple[str, ...],
    train: bool = True,
    embeddings: str = "flow",
    glad_seeds: int | None = None,
    sets: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One (scenario, noise, seed): every method's metrics, the training check, timings.
    ``glad_seeds``: run crowd-kit's GLAD only for seeds below this (it is ~20× slower than
    everything else together: a Python call per task and E-step)."""
    t0 = time.perf_counter()
    if glad_seeds is not None and seed >= glad_seeds:
        methods = tuple(m for m in methods if m != "crowdkit_glad")
    sim = S.simulate(scenario, pairs, noise, seed)
    post = S.oracle(sim)
    res: dict[str, Result] = {}
    secs: dict[str, float] = {}
    for m in methods:
        t = time.perf_counter()
        if m == "majority":
            res[m] = method_majority(sim)
        elif m == "plain_ds":
            res[m] = method_plain_ds(sim)
        elif m.startswith("crowdkit_"):
            res[m] = method_crowdkit(sim, m)
        elif m == "oracle":
            res[m] = method_oracle(sim, post)
        elif m == "default":
            res[m] = method_default(sim, embeddings, sets=sets)
        elif m == "default_rule":
            res[m] = method_default(sim, embeddings, shared_rule=True, sets=sets)
        secs[m] = time.perf_counter() - t
    metrics = {m: score(sim, r) for m, r in res.items()}
    # the ceiling at each method's own coverage: the oracle publishing as many pairs, its
    # most confident ones, oriented by its posterior (the Bayes-optimal choice of k pairs)
    rank = np.argsort(-np.maximum(post.p_a, 1.0 - post.p_a), kind="stable")
    hit = np.cumsum((post.p_a[rank] > 0.5) == sim.better_a[rank])
    for m, r in res.items():
        k = int(r.published.sum())
        metrics[m]["acc_oracle_same_kept"] = float(hit[k - 1] / k) if k else float("nan")
        metrics[m]["acc_vs_oracle_same_kept"] = (
            metrics[m]["acc"] - metrics[m]["acc_oracle_same_kept"] if k else float("nan")
        )
    out: dict[str, Any] = {
        "scenario": scenario,
        "noise": noise,
        "seed": seed,
        "pairs": pairs,
        "params": sim.params,
        "metrics": metrics,
        "seconds": secs,
        "label_wrong": float(np.mean(~sim.label_right)) if sim.has_label else None,
    }
    if "default" in res:
        d = res["default"]
        info = dict(d.info)
        if "oracle" in res:  # what the default does where the oracle decides otherwise
            o = res["oracle"]
            names = ("keep", "flip", "drop")
            info["vs_oracle"] = {
                f"{names[a]}->{names[b]}": int(((o.decision == a) & (d.decision == b)).sum())
                for a in range(3)
                for b in range(3)
                if a != b
            }
        out["default_info"] = info
        if train:
            out["training"] = training_check(sim, d)
    out["total_seconds"] = time.perf_counter() - t0
    return _jsonable(out)


def _mean_std(vals: list[float | None]) -> tuple[float | None, float | None]:
    v = np.array([x for x in vals if x is not None and np.isfinite(x)], dtype=np.float64)
    if not v.size:
        return None, None
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else None


METRICS = (
    "acc",
    "f1",
    "clean_kept",
    "kept",
    "flipped",
    "rho",
    "rho_raw",
    "rho_bayes",
    "acc_oracle_same_kept",
    "acc_vs_oracle_same_kept",
)
TRAIN = ("raw", "curated_w", "curated_margin", "clean", "closed_w", "closed_margin")


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs → cells (scenario × noise): mean and std over seeds of every metric, and the
    paired differences default − majority / plain_ds / oracle per seed."""
    cells: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in runs:
        cells.setdefault((r["scenario"], r["noise"]), []).append(r)
    out = []
    for (scn, noise), rs in cells.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        seen = {m for r in rs for m in r["metrics"]}
        methods = [m for m in METHODS if m in seen]
        cell: dict[str, Any] = {
            "scenario": scn,
            "noise": noise,
            "seeds": [r["seed"] for r in rs],
            "pairs": rs[0]["pairs"],
            "methods": {},
        }
        for m in methods:
            cell["methods"][m] = {}
            for k in METRICS:
                mu, sd = _mean_std([r["metrics"].get(m, {}).get(k) for r in rs])
                if mu is not None:
                    cell["methods"][m][k] = {"mean": mu, "std": sd}
        for prod in ("default_rule", "default"):
            if prod not in methods:
                continue
            diffs = {}
            for ref in ("majority", "plain_ds", "oracle"):
                if ref not in methods:
                    continue
                for k in ("acc", "f1", "clean_kept", "acc_vs_oracle_same_kept"):
                    d = [
                        (r["metrics"][prod][k] - r["metrics"][ref][k])
                        for r in rs
                        if r["metrics"][prod].get(k) is not None
                        and r["metrics"].get(ref, {}).get(k) is not None
                    ]
                    mu, sd = _mean_std(d)
                    if mu is not None:
                        diffs[f"{k}_vs_{ref}"] = {"mean": mu, "std": sd, "n": len(d)}
            cell[f"{prod}_minus"] = diffs
        if "default" in methods:
            diffs = cell["default_minus"]
            d = [
                r["metrics"]["default"]["acc"] - r["metrics"]["default"]["acc_oracle_same_kept"]
                for r in rs
                if r["metrics"]["default"].get("acc_oracle_same_kept") is not None
                and r["metrics"]["default"].get("acc") is not None
            ]
            mu, sd = _mean_std(d)
            if mu is not None:
                diffs["acc_vs_oracle_same_kept"] = {"mean": mu, "std": sd, "n": len(d)}
            if all("training" in r for r in rs):
                cell["training"] = {
                    k: dict(zip(("mean", "std"), _mean_std([r["training"][k] for r in rs])))
                    for k in TRAIN
                }
            cell["default_info"] = [r.get("default_info") for r in rs]
        cell["label_wrong"] = _mean_std([r["label_wrong"] for r in rs])[0]
        cell["seconds"] = sum(r["total_seconds"] for r in rs)
        out.append(cell)
    return out


def _loses(diff: dict[str, Any] | None) -> bool:
    """Below the reference beyond 2 seed-std of the paired difference (with one seed:
    by more than 0.005)."""
    if not diff:
        return False
    mu, sd = diff["mean"], diff["std"]
    return mu < 0 and (-mu > 2 * sd if sd is not None else -mu > 0.005)


def summarise(cells: list[dict[str, Any]]) -> dict[str, Any]:
    methods = list(cells[0]["methods"]) if cells else []
    per_method = {}
    for m in methods:
        per_method[m] = {}
        for k in ("acc", "f1", "clean_kept", "kept", "flipped", "rho", "rho_raw"):
            v = [c["methods"][m][k]["mean"] for c in cells if k in c["methods"].get(m, {})]
            if v:
                per_method[m][k] = float(np.mean(v))
    summ: dict[str, Any] = {"per_method_mean_over_cells": per_method, "cells": len(cells)}
    for m in methods:
        v = [
            c["methods"][m]["acc_vs_oracle_same_kept"]["mean"]
            for c in cells
            if "acc_vs_oracle_same_kept" in c["methods"].get(m, {})
        ]
        if v:
            per_method[m]["acc_vs_oracle_same_kept"] = float(np.mean(v))
    if "default" not in methods:
        return summ
    name = lambda c: f"{c['scenario']}@{c['noise']:g}"  # noqa: E731

    def acc(c: dict, m: str) -> float | None:
        return c["methods"].get(m, {}).get("acc", {}).get("mean")

    rel_floor = [
        (
            acc(c, "default")
            - max(x for x in (acc(c, "majority"), acc(c, "plain_ds")) if x is not None),
            name(c),
        )
        for c in cells
        if acc(c, "majority") is not None or acc(c, "plain_ds") is not None
    ]
    gaps = [
        (acc(c, "oracle") - acc(c, "default"), name(c))
        for c in cells
        if acc(c, "oracle") is not None
    ]
    if rel_floor:
        worst = min(rel_floor)
        summ["worst_vs_floor"] = {"cell": worst[1], "acc_default_minus_best_floor": worst[0]}
    same = [
        (-c["default_minus"]["acc_vs_oracle_same_kept"]["mean"], name(c))
        for c in cells
        if "acc_vs_oracle_same_kept" in c.get("default_minus", {})
    ]
    if same:
        worst = max(same)
        summ["worst_vs_oracle_same_kept"] = {"cell": worst[1], "acc_gap": worst[0]}
        summ["mean_gap_to_oracle_same_kept"] = float(np.mean([g for g, _ in same]))
    if gaps:
        worst = max(gaps)
        summ["worst_vs_oracle"] = {"cell": worst[1], "acc_gap": worst[0]}
        summ["mean_gap_to_oracle_acc"] = float(np.mean([g for g, _ in gaps]))
        lab = [
            g
            for (g, n_), c in zip(gaps, cells)
            if S.SCENARIOS[c["scenario"]] not in (S.judges_only, S.length_judges)
        ]
        if lab:
            summ["mean_gap_to_oracle_acc_label_scenarios"] = float(np.mean(lab))
    for prod in ("default", "default_rule"):
        losses = []
        for c in cells:
            for key, diff in c.get(f"{prod}_minus", {}).items():
                metric, ref = key.rsplit("_vs_", 1)
                metric = "acc@kept" if metric == "acc_vs_oracle_same_kept" else metric
                if ref in ("majority", "plain_ds") and _loses(diff):
                    losses.append(
                        {
                            "cell": name(c),
                            "metric": metric,
                            "vs": ref,
                            "diff": diff["mean"],
                            "std": diff["std"],
                        }
                    )
        if any(f"{prod}_minus" in c for c in cells):
            summ[f"{prod}_loses"] = losses
    tr: dict[str, Any] = {}
    for c in cells:
        if "training" in c:
            tr.setdefault(c["scenario"], []).append(c)
    by_s: dict[str, Any] = {}
    for sc, cs in tr.items():
        cs = [c for c in cs if c["noise"] >= 0.2]
        if not cs:
            continue
        d = {
            k: _mean_std([c["training"][k]["mean"] for c in cs])[0]
            for k in ("raw", "curated_w", "curated_margin", "clean")
        }
        gap = (d["clean"] - d["raw"]) if None not in (d["clean"], d["raw"]) else None
        for k, src in (("closed_w", "curated_w"), ("closed_margin", "curated_margin")):
            d[k] = (d[src] - d["raw"]) / gap if gap and gap > 0.002 else None
        by_s[sc] = d
    summ["training_by_scenario"] = by_s  # noise >= 0.2; shares closed from the means
    return summ


# ------------------------------------------------------------------------------ output


def _fmt(d: dict | None, k: str, w: int = 13) -> str:
    if not d or k not in d or d[k].get("mean") is None:
        return f"{'–':>{w}}"
    s = (
        f"{d[k]['mean']:.3f}±{d[k]['std']:.3f}"
        if d[k].get("std") is not None
        else f"{d[k]['mean']:.3f}"
    )
    return f"{s:>{w}}"


def print_cell(c: dict[str, Any]) -> None:
    lw = c.get("label_wrong")
    print(
        f"\n== {c['scenario']}  noise {c['noise']:.2f}  ({len(c['seeds'])} seed(s) × "
        f"{c['pairs']} pairs"
        + (f"; wrong labels {lw:.3f}" if lw is not None else "; no file label")
        + f"; {c['seconds']:.0f} s)"
    )
    print(
        f"  {'method':<14}{'acc':>13}{'F1':>13}{'clean kept':>13}{'kept':>13}"
        f"{'flipped':>13}{'rho':>13}{'rho raw':>13}{'acc−orc@kept':>14}"
    )
    for m, d in c["methods"].items():
        extra = ""
        if m == "oracle" and "rho_bayes" in d:
            extra = f"  (rho of E[share]: {d['rho_bayes']['mean']:.3f})"
        dm = c.get("default_minus", {})
        if m == "default" and "acc_vs_oracle" in dm:
            extra = f"  acc − oracle {dm['acc_vs_oracle']['mean']:+.3f}"
            if "acc_vs_oracle_same_kept" in dm:
                extra += (
                    f", − oracle at the same kept share "
                    f"{dm['acc_vs_oracle_same_kept']['mean']:+.3f}"
                )
        print(
            f"  {m:<14}"
            + "".join(
                _fmt(d, k) for k in ("acc", "f1", "clean_kept", "kept", "flipped", "rho", "rho_raw")
            )
            + _fmt(d, "acc_vs_oracle_same_kept", 14)
            + extra
        )
    if "training" in c:
        t = c["training"]
        g = lambda k: "–" if t[k]["mean"] is None else f"{t[k]['mean']:.3f}"  # noqa: E731
        print(
            f"  BT head, held-out acc: raw {g('raw')}  default+weights {g('curated_w')}  "
            f"default+margin {g('curated_margin')}  clean {g('clean')}  gap closed "
            f"{g('closed_w')} / {g('closed_margin')}"
        )
    infos = [i for i in c.get("default_info", []) if i]
    if infos:
        i0 = infos[0]
        den = i0.get("denoise") or {}
        how = {k: v for k, v in (den.get("posterior") or {}).items() if k in ("p_source", "mean_q")}
        w = den.get("weights") or {}
        if w:
            how.update(eta=w.get("eta"), scales=w.get("scales"))
        rs = Counter()
        for i in infos:
            rs.update(i.get("reasons", {}))
        rs = {k: round(v / len(infos)) for k, v in rs.most_common()}
        vo = Counter()
        for i in infos:
            vo.update(i.get("vs_oracle", {}))
        vo = {k: round(v / len(infos)) for k, v in vo.most_common() if v}
        print(
            f"  default (seed {c['seeds'][0]}): aggregate {i0.get('aggregate_method')}, "
            f"judges-only {i0.get('judges_method')}, label-correlated "
            f"{i0.get('label_correlated') or '{}'}, denoise {how}, embeddings "
            f"{i0.get('embeddings')}, frame aligned {i0.get('frame_aligned')}"
        )
        print(f"  default outcomes (mean over seeds): {rs}")
        print(f"  oracle->default decisions that differ: {vo}")


def print_summary(cells: list[dict[str, Any]], summ: dict[str, Any], elapsed: float) -> None:
    methods = list(summ["per_method_mean_over_cells"])
    print("\n" + "=" * 100)
    for metric, title in (
        ("acc", "kept-label accuracy"),
        (
            "acc_vs_oracle_same_kept",
            "kept-label accuracy minus the oracle's "
            "at the same kept share (coverage-matched; ≤ 0 up to seed noise)",
        ),
        ("f1", "noisy-pair F1"),
        ("clean_kept", "share of clean pairs kept"),
        ("kept", "share kept"),
        ("rho", "Spearman(p_hat, true share)"),
    ):
        print(f"\n{title} per cell (mean over seeds)")
        print(
            f"  {'cell':<24}"
            + "".join(f"{m:>14}" for m in methods)
            + ("  default−oracle  (same kept)" if metric == "acc" else "")
            + ("      raw share" if metric == "rho" else "")
        )
        for c in cells:
            vals = [c["methods"][m].get(metric, {}).get("mean") for m in methods]
            if all(v is None for v in vals):
                continue
            line = f"  {c['scenario'] + '@' + format(c['noise'], 'g'):<24}" + "".join(
                f"{'–':>14}" if v is None else f"{v:>14.3f}" for v in vals
            )
            dm = c.get("default_minus", {})
            if metric == "acc" and "acc_vs_oracle" in dm:
                line += f"  {dm['acc_vs_oracle']['mean']:+14.3f}"
                if "acc_vs_oracle_same_kept" in dm:
                    line += f"  {dm['acc_vs_oracle_same_kept']['mean']:+11.3f}"
            if metric == "rho":
                rr = c["methods"].get("default", {}).get("rho_raw", {}).get("mean")
                line += f"  {rr:13.3f}" if rr is not None else ""
            print(line)
    print("\nmean over cells")
    cols = ("acc", "acc_vs_oracle_same_kept", "f1", "clean_kept", "kept", "flipped", "rho")
    heads = ("acc", "acc−orc@kept", "f1", "clean_kept", "kept", "flipped", "rho")
    print(f"  {'method':<14}" + "".join(f"{k:>14}" for k in heads))
    for m, d in summ["per_method_mean_over_cells"].items():
        print(f"  {m:<14}" + "".join(f"{d[k]:>14.3f}" if k in d else f"{'–':>14}" for k in cols))
    if "worst_vs_floor" in summ:
        w = summ["worst_vs_floor"]
        print(
            f"\nworst cell for default vs max(majority, plain_ds), kept-label accuracy: "
            f"{w['cell']} ({w['acc_default_minus_best_floor']:+.3f})"
        )
    if "worst_vs_oracle" in summ:
        w = summ["worst_vs_oracle"]
        print(
            f"worst cell for default vs oracle: {w['cell']} (gap {w['acc_gap']:+.3f}); mean "
            f"gap to oracle {summ['mean_gap_to_oracle_acc']:+.3f} (label scenarios: "
            f"{summ.get('mean_gap_to_oracle_acc_label_scenarios', float('nan')):+.3f})"
        )
    if "worst_vs_oracle_same_kept" in summ:
        w = summ["worst_vs_oracle_same_kept"]
        print(
            f"at the default's own kept share, the oracle's accuracy is higher by "
            f"{summ['mean_gap_to_oracle_same_kept']:+.3f} on average; worst cell "
            f"{w['cell']} ({w['acc_gap']:+.3f})"
        )
    for prod in ("default", "default_rule"):
        if f"{prod}_loses" not in summ:
            continue
        ls = summ[f"{prod}_loses"]
        print(
            f"\ncells where {prod} < majority / plain_ds beyond 2 seed-std (acc@kept: "
            f"accuracy minus the oracle's at the same kept share): {len(ls)}"
        )
        for x in ls:
            sd = "one seed" if x["std"] is None else f"std {x['std']:.3f}"
            print(f"  {x['cell']:<24} {x['metric']:<11} vs {x['vs']:<9} {x['diff']:+.3f} ({sd})")
    if summ.get("training_by_scenario"):
        print(
            "\ntraining check by scenario (cells with noise ≥ 0.2, mean over them): held-out "
            "BT accuracy; closed = share of the raw → clean gap closed"
        )
        print(f"  {'scenario':<20}" + "".join(f"{k:>16}" for k in TRAIN))
        for s, d in summ["training_by_scenario"].items():
            print(
                f"  {s:<20}"
                + "".join(f"{'–':>16}" if d[k] is None else f"{d[k]:>16.3f}" for k in TRAIN)
            )
    print(f"\ntotal wall time {elapsed:.0f} s")


def check_flow(
    scenario: str = "label_copier", n: int = 300, noise: float = 0.3, seed: int = 0
) -> dict[str, Any]:
    """Run the real Prefect flow (``flows.curate.run_curation``, ephemeral mode, a temporary
    data root) on one simulated pairs file and compare what it publishes with
    :func:`run_default`: the guard against the bench drifting from the flow."""
    import polars as pl

    _prefect_home()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    sim = S.simulate(scenario, n, noise, seed)
    with tempfile.TemporaryDirectory(prefix="prefcurate-checkflow-") as d:
        path = S.write_pairs_jsonl(sim, Path(d) / f"{S.LABEL_ANNOTATOR}.jsonl")
        from flows.curate import run_curation

        t0 = time.perf_counter()
        summary = run_curation(
            {
                "name": "matrix-check",
                "data_root": str(Path(d) / "data"),
                "cache_dir": str(Path(d) / "cache"),
                "input": {"kind": "pairs", "path": str(path), "limit": None},
                "judge": {"judges": []},
            }
        )
        secs = time.perf_counter() - t0
        pub = pl.read_parquet(Path(summary["path"]) / "data.parquet")
    flow = {
        r["source_id"]: r
        for r in pub.select("source_id", "flipped", "p_hat", "weight", "margin").to_dicts()
    }
    ours = run_default(sim)
    mism = []
    for sid in sim.ids:
        o, f = ours[sid], flow.get(sid)
        if (o["decision"] == "drop") != (f is None):
            mism.append((sid, o["decision"], "dropped" if f is None else "published"))
        elif f is not None and (
            (o["decision"] == "flip") != bool(f["flipped"])
            or any(abs((o[k] or 0.0) - (f[k] or 0.0)) > 1e-9 for k in ("p_hat", "weight", "margin"))
        ):
            mism.append((sid, o, f))
    return {
        "scenario": scenario,
        "pairs": n,
        "flow_published": len(flow),
        "bench_published": sum(o["decision"] != "drop" for o in ours.values()),
        "mismatches": len(mism),
        "examples": [str(m) for m in mism[:5]],
        "flow_seconds": secs,
    }


# --------------------------------------------------------------------------------- CLI


def code_version() -> dict[str, Any]:
    """The commit the product code came from, and whether pipeline/, schemas/ or flows/
    differ from it (the numbers describe the working tree)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            text=True,
            capture_output=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "pipeline", "schemas", "flows"],
            cwd=root,
            text=True,
            capture_output=True,
            timeout=10,
        ).stdout.split("\n")
        return {"commit": head or None, "modified": [d[3:] for d in dirty if d.strip()]}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "modified": []}


def _job(args: tuple) -> dict[str, Any]:
    return run_one(*args)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK['pairs']} pairs, noise {QUICK['noise']}, {QUICK['seeds']} seed, no GLAD",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    ap.add_argument("--save", metavar="PATH", help="also write the JSON document to PATH")
    ap.add_argument("--scenarios", nargs="+", default=list(S.SCENARIOS), choices=list(S.SCENARIOS))
    ap.add_argument("--noise", type=float, nargs="+", default=None)
    ap.add_argument("--seeds", type=int, default=None, help="seeds per cell (3; quick 1)")
    ap.add_argument("--pairs", type=int, default=None, help="pairs per dataset (1500; quick 800)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (2)")
    ap.add_argument(
        "--glad-seeds",
        type=int,
        default=None,
        help="run crowd-kit GLAD on the first N seeds of a cell only (default 1, "
        "--quick 0; it is the slowest method by far: ~5 s a run)",
    )
    ap.add_argument("--no-train", action="store_true", help="skip the training check")
    ap.add_argument(
        "--embeddings",
        choices=("flow", "always", "never"),
        default="flow",
        help="pass the simulated embeddings to the default path: as the flow "
        "decides (RunConfig.embeddings_on), always or never",
    )
    ap.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the product's config for default / default_rule, as "
        "prefcurate run --set does (repeatable): e.g. "
        "--set denoise.drop_below=0.7",
    )
    ap.add_argument(
        "--from-json",
        metavar="PATH",
        help="print the tables and summary of a document saved with --save / --json (no run)",
    )
    ap.add_argument(
        "--check-flow",
        action="store_true",
        help="only run the real Prefect flow on one simulated file and compare "
        "it with run_default (exit 1 on any difference)",
    )
    a = ap.parse_args(argv)
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(v, "1")  # one thread per (spawned) worker: 2-core machines
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    _prefect_home()  # one for every worker (they inherit it), removed at exit
    if a.from_json:
        doc = json.loads(Path(a.from_json).read_text())
        summ = summarise(doc["cells"])
        for c in doc["cells"]:
            print_cell(c)
        print_summary(doc["cells"], summ, doc.get("wall_seconds", 0.0))
        print(f"(from {a.from_json}; code {doc['config'].get('code')})")
        return 0
    if a.check_flow:
        res = check_flow()
        print(json.dumps(res, indent=1))
        return 1 if res["mismatches"] else 0
    base = QUICK if a.quick else FULL
    noise = tuple(a.noise) if a.noise else base["noise"]
    seeds = a.seeds if a.seeds is not None else base["seeds"]
    pairs = a.pairs if a.pairs is not None else base["pairs"]
    a.glad_seeds = a.glad_seeds if a.glad_seeds is not None else base["glad_seeds"]
    methods = tuple(m for m in METHODS if m in a.methods)
    sets = tuple(a.sets)
    if sets:
        from bench.scenarios import simulate as _sim

        default_config(_sim("sparse", 2, 0.1), sets)  # a bad --set fails here, not in a worker
    jobs = [
        (s, nz, sd, pairs, methods, not a.no_train, a.embeddings, a.glad_seeds, sets)
        for s in a.scenarios
        for nz in noise
        for sd in range(seeds)
    ]
    if sets:
        log(f"default / default_rule run with --set {' '.join(sets)}")
    log(
        f"noise matrix: {len(a.scenarios)} scenarios × {len(noise)} noise levels × {seeds} "
        f"seed(s) = {len(jobs)} runs of {pairs} pairs, {a.jobs} process(es); crowd-kit GLAD "
        f"on the first {a.glad_seeds} seed(s) of each cell"
    )
    t0 = time.perf_counter()
    runs: list[dict[str, Any]] = []
    if a.jobs <= 1:
        for i, j in enumerate(jobs, 1):
            runs.append(run_one(*j))
            log(
                f"[{i}/{len(jobs)}] {j[0]} noise {j[1]} seed {j[2]}: "
                f"{runs[-1]['total_seconds']:.1f} s"
            )
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=a.jobs, mp_context=mp.get_context("spawn")) as ex:
            futs = {ex.submit(_job, j): j for j in jobs}
            for i, f in enumerate(as_completed(futs), 1):
                j = futs[f]
                runs.append(f.result())
                log(
                    f"[{i}/{len(jobs)}] {j[0]} noise {j[1]} seed {j[2]}: "
                    f"{runs[-1]['total_seconds']:.1f} s"
                )
    order = {(s, nz, sd): k for k, (s, nz, sd, *_) in enumerate(jobs)}
    runs.sort(key=lambda r: order[(r["scenario"], r["noise"], r["seed"])])
    cells = aggregate(runs)
    summ = summarise(cells)
    elapsed = time.perf_counter() - t0
    doc = _jsonable(
        {
            "config": {
                "code": code_version(),
                "scenarios": a.scenarios,
                "noise": list(noise),
                "seeds": seeds,
                "pairs": pairs,
                "methods": list(methods),
                "flip_below": FLIP_BELOW,
                "drop_below": DROP_BELOW,
                "embeddings": a.embeddings,
                "quick": a.quick,
                "jobs": a.jobs,
                "glad_seeds": a.glad_seeds,
                "sets": list(sets),
            },
            "summary": summ,
            "cells": cells,
            "runs": runs,
            "wall_seconds": elapsed,
        }
    )
    if a.save:
        Path(a.save).write_text(json.dumps(doc, indent=1))
    if a.json:
        print(json.dumps(doc, indent=1))
    else:
        for c in cells:
            print_cell(c)
        print_summary(cells, summ, elapsed)
        print(f"code: {doc['config']['code']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
