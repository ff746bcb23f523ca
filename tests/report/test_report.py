"""Quality report of published versions: numbers against the manifest and the data, the
HTML is self-contained and escaped, and it renders in headless Chromium with every plot."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from rich.console import Console

from flows.curate import curate
from pipeline.report import build as rp
from pipeline.report import html as rh
from pipeline.store import datasets as store
from schemas.config import load_config
from tests.fake_run import FAKE_MODELS

PLANTED = "<script>alert(1)</script>"


def _fake_cfg(root: Path, examples: Path, *extra: str) -> dict:
    return load_config(
        None,
        [
            f"data_root={root}",
            "name=fake-run",
            f"input.path={examples / 'prompts.jsonl'}",
            "input.limit=4",
            *FAKE_MODELS,
            *extra,
        ],
    ).model_dump(mode="json")


@pytest.fixture(scope="module")
def versions(tmp_path_factory) -> dict[str, Path]:
    """A fake-engine version, the pairs_votes example, and the example with planted HTML."""
    examples = Path(__file__).resolve().parents[2] / "data" / "examples"
    out = {}
    root = tmp_path_factory.mktemp("fake")
    out["fake"] = Path(curate(_fake_cfg(root, examples))["path"])
    root = tmp_path_factory.mktemp("example")
    # a high drop band so that the example also drops pairs: the posterior is below 0.96
    # for pv-03, pv-09 and pv-11 (dropped low_confidence) and flips pv-04/06/07/10
    strict = "denoise.drop_below=0.96"
    cfg = load_config(
        examples / "pairs_votes.yaml",
        [f"data_root={root}", f"input.path={examples / 'pairs_votes.jsonl'}", strict],
    )
    out["example"] = Path(curate(cfg.model_dump(mode="json"))["path"])
    # the same example with markup planted in texts that the report shows: pv-04 is flipped
    # (its texts appear as a flipped example), pv-03 is dropped (a dropped example)
    root = tmp_path_factory.mktemp("planted")
    rows = [
        json.loads(line)
        for line in (examples / "pairs_votes.jsonl").read_text().splitlines()
        if line.strip()
    ]
    for r in rows:
        if r["id"] in ("pv-04", "pv-03"):
            r["chosen"] = f'{PLANTED} & "quoted" <b>bold</b> [red]markup[/red]'
    src = root / "planted.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = load_config(
        examples / "pairs_votes.yaml", [f"data_root={root}", f"input.path={src}", strict]
    )
    out["planted"] = Path(curate(cfg.model_dump(mode="json"))["path"])
    return out


def _data(vpath: Path) -> pl.DataFrame:
    return pl.read_parquet(vpath / "data.parquet")


def _text(msgs) -> str:
    return "\n".join(m["content"] for m in msgs if m["role"] == "assistant")


@pytest.mark.parametrize("which", ["fake", "example"])
def test_numbers_match_manifest_and_data(versions, which):
    vpath = versions[which]
    manifest = store.read_manifest(vpath)
    rep = rp.build_report(vpath)
    json.dumps(rep, allow_nan=False)  # JSON-able, no NaN
    assert [k for k, _ in rp.SECTIONS] == [k for k in rep if k in dict(rp.SECTIONS)]

    st = rep["stages"]
    assert st["order"] == manifest["stage_order"]
    for row in st["rows"]:
        m = manifest["stages"][row["stage"]]
        assert (row["in"], row["kept"], row["dropped"], row["quarantined"]) == (
            m["in"],
            m["kept"],
            m["dropped"],
            m["quarantined"],
        )
    assert sum(st["drop_reasons"].values()) == manifest["rows"]["dropped"]

    data = _data(vpath)
    n = manifest["rows"]["data"]
    for col in ("p_hat", "disagreement", "margin", "weight"):
        s = rep["distributions"][col]["stats"]
        assert s["n"] == n and s["mean"] == pytest.approx(data[col].mean())
        assert s["median"] == pytest.approx(data[col].median())
        assert sum(rep["distributions"][col]["hist"]["counts"]) == n
    assert rep["scores"]["score_chosen"]["mean"] == pytest.approx(data["score_chosen"].mean())

    ch = [len(_text(m)) for m in data["chosen"].to_list()]
    rj = [len(_text(m)) for m in data["rejected"].to_list()]
    lb = rep["length_bias"]
    differ = [(c, r) for c, r in zip(ch, rj) if c != r]
    assert lb["pairs"] == n and lb["equal_length"] == n - len(differ)
    if differ:
        assert lb["longer_wins"] == pytest.approx(sum(c > r for c, r in differ) / len(differ))
    # chosen − rejected lengths after (the data) and before curation (the margins pairs)
    assert lb["after"]["pairs"] == n and sum(lb["after"]["counts"]) == n
    assert lb["after"]["chosen_longer_share"] == pytest.approx(
        sum(c > r for c, r in zip(ch, rj)) / n
    )
    before = lb["before"]
    assert before is not None and sum(before["counts"]) == before["pairs"] >= n
    # the per-annotator length GLM of the aggregate stage, for every annotator with a vote
    if which == "example":
        voted = {r["annotator"] for r in lb["annotators"]}
        assert voted and voted <= set(manifest["stage_info"]["aggregate"]["annotators"])
        for r in lb["annotators"]:
            assert 0.0 <= r["longer_win_rate"] <= 1.0
        assert lb["control"]["mode"] == "tested"

    den = manifest["stages"]["denoise"]
    flipped = int((data["decision"] == "flip").sum())
    assert rep["noise"]["noise_rate"] == pytest.approx(
        (sum(den["dropped"].values()) + flipped) / den["in"]
    )
    ex = rep["examples"]
    assert ex["flipped_total"] == flipped and ex["dropped_total"] == manifest["rows"]["dropped"]
    # the run's stage outputs are still there: dropped pairs come with their texts
    assert ex["texts_from_lineage"]
    denoise_drops = [e for e in ex["dropped"] if e["stage"] == "denoise"]
    assert denoise_drops and all(e["chosen"] and e["rejected"] for e in denoise_drops)


def test_example_specifics(versions):
    rep = rp.build_report(versions["example"])
    assert rep["noise"]["noise_rate"] == pytest.approx(7 / 12)  # 3 dropped + 4 flipped
    assert rep["examples"]["flipped_total"] == 4
    assert rep["examples"]["flipped_by_denoise"] == rep["noise"]["flipped"] == 4  # one count
    assert {e["reason"] for e in rep["examples"]["dropped"]} == {"low_confidence"}
    # the file's own label and five annotators: a 6 x 6 agreement matrix with κ
    agr = rep["judges"]["agreement"]
    assert len(agr["annotators"]) == 6
    assert all(agr["agreement"][i][i] == 1.0 for i in range(6))
    assert rep["judges"]["position_consistency"] is None and rep["judges"]["note"]
    assert rep["similarity"]["note"]  # no similarity computed: said, not crashed


def test_fake_judge_agreement_is_position_consistency(versions):
    """ab vs ba annotators of one judge: their agreement is the judge's position consistency."""
    vpath = versions["fake"]
    manifest = store.read_manifest(vpath)
    pc = manifest["stage_info"]["aggregate"]["position_consistency"]
    ((judge, stats),) = pc.items()
    rep = rp.build_report(vpath)
    agr = rep["judges"]["agreement"]
    # the fake run's auto Yes/No rubric judge is an annotator too
    assert agr["annotators"] == sorted(agr["annotators"])
    i, j = agr["annotators"].index(f"{judge}|ab"), agr["annotators"].index(f"{judge}|ba")
    assert agr["agreement"][i][j] == pytest.approx(stats["consistency"])
    assert agr["n"][i][j] == stats["pairs"]
    assert rep["judges"]["position_consistency"] == {judge: stats["consistency"]}
    titles = [t["title"] for t in rep["judges"]["tables"]]
    assert "aggregate: position_consistency" in titles
    # the judge statistics as tables a person reads: a row per judge and per annotator,
    # no dotted raw keys (probe D12)
    (per_judge,) = [t for t in rep["judges"]["tables"] if t["title"].startswith("judge: judges")]
    assert [r[0] for r in per_judge["rows"]] == [judge]
    assert per_judge["rows"][0][2] == pytest.approx(stats["consistency"], abs=1e-3)
    assert not any(
        "." in c
        for t in rep["judges"]["tables"]
        for c in t["columns"]
        if t["title"].startswith("judge:")
    )


def test_judge_stats_rendered_whatever_their_shape(versions):
    """Another stage may add judge_stats with any keys: shown as tables; absent: a note."""
    vpath = versions["example"]
    manifest = store.read_manifest(vpath)
    data, dropped, quar = (
        pl.read_parquet(vpath / f).to_arrow()
        for f in ("data.parquet", "dropped.parquet", "quarantine.parquet")
    )
    manifest["stage_info"]["judge"] = {
        "judge_stats": {
            "cohen_kappa": {"j1|ab~j1|ba": 0.41},
            "krippendorff_alpha": 0.33,
            "length_bias": {"longer_wins": 0.61, "pairs": 12},
            "position_consistency": {"j1": {"consistency": 0.8, "pairs": 12}},
        }
    }
    # a similarity column (no version has one yet): stats, histogram and its plot
    sims = [0.1 * i for i in range(data.num_rows)]
    with_sim = data.append_column("similarity", pa.array(sims, pa.float64()))
    rep = rp.report_from_tables(manifest, with_sim, dropped, quar)  # before-publish API
    (t,) = [t for t in rep["judges"]["tables"] if t["title"] == "judge: judge_stats"]
    flat = {r[0]: r[1] for r in t["rows"]}
    assert flat["krippendorff_alpha"] == 0.33 and flat["length_bias.longer_wins"] == 0.61
    assert rep["similarity"]["stats"]["n"] == data.num_rows
    assert rep["similarity"]["stats"]["max"] == pytest.approx(max(sims))
    html = rp.render_html(rep)
    assert "krippendorff_alpha" in html and "length_bias.longer_wins" in html
    assert 'id="plot-similarity"' in html
    assert rep["lineage"]["stages_found"] == []  # no run_root given: no lineage, no error
    manifest["stage_info"] = {}
    manifest["stages"] = {}
    rep = rp.report_from_tables(manifest, data.slice(0, 0), dropped.slice(0, 0), quar.slice(0, 0))
    html = rp.render_html(rep)  # empty version: every section still renders
    for _, heading in rp.SECTIONS:
        assert rh.esc(heading) in html


def _check_html(html: str) -> None:
    for _, heading in rp.SECTIONS:
        assert f"<h2>{rh.esc(heading)}</h2>" in html
    # self-contained: no external resource of any kind
    assert not re.search(
        r"""(?:src|href|srcset|action|poster)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I
    )
    assert not re.search(r"url\(\s*['\"]?\s*(?:https?:)?//", html, re.I)
    assert "@import" not in html and "<link" not in html.lower()
    assert "<script" not in html.lower() and "<iframe" not in html.lower()
    # every plot: an id and a caption
    figs = re.findall(
        r'<figure id="fig-([^"]+)"><img class="plot" id="([^"]+)"[^>]*>'
        r"<figcaption>([^<]+)</figcaption></figure>",
        html,
    )
    assert figs and all(a == b and c.strip() for a, b, c in figs)
    assert len(figs) == html.count("<img")


def test_html_self_contained_and_escaped(versions, tmp_path):
    rep = rp.build_report(versions["planted"])
    html = rp.render_html(rep)
    _check_html(html)
    assert PLANTED not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quoted&quot;" in html
    # planted text reached both example tables (flipped pair pv-04, dropped pair pv-03)
    assert rep["examples"]["flipped"][0]["source_id"] == "pv-04"
    assert any(PLANTED in (e["chosen"] or "") for e in rep["examples"]["dropped"])
    assert any(PLANTED in (e["rejected"] or "") for e in rep["examples"]["flipped"])
    # the terminal shows the same text literally (no rich markup interpretation)
    console = Console(record=True, width=400, force_terminal=False, file=io.StringIO())
    rp.render_terminal(rep, console)
    text = console.export_text()
    assert "[red]mar" in text and PLANTED in text
    for _, heading in rp.SECTIONS:
        assert heading in text


def test_write_report_beside_the_immutable_version(versions, tmp_path):
    vpath = versions["example"]
    out = rp.write_report(vpath)
    assert out == vpath.parent / "reports" / "v1.html" and out.is_file()
    assert store.verify_version(vpath) == []  # nothing written inside the version
    assert store.list_versions(vpath.parent.parent.parent, "example-pairs") == [1]
    other = rp.write_report(vpath, tmp_path / "r.html")
    assert other.read_text().startswith("<!DOCTYPE html>")


# ---------------------------------------------------------------------------- Chromium

_CHECKER = """<script>
(function () {
  var errors = [];
  window.addEventListener('error', function (e) {
    errors.push(String(e.message || (e.target && (e.target.currentSrc || e.target.tagName))
                       || 'error'));
  }, true);
  var origError = console.error;
  console.error = function () {
    errors.push(Array.prototype.join.call(arguments, ' '));
    return origError.apply(console, arguments);
  };
  window.addEventListener('load', function () {
    var plots = document.querySelectorAll('img.plot, svg.plot');
    var ok = 0, bad = [];
    plots.forEach(function (p) {
      var r = p.getBoundingClientRect();
      var isImg = p.tagName.toLowerCase() === 'img';
      var drawn = r.width > 0 && r.height > 0 &&
                  (!isImg || (p.complete && p.naturalWidth > 0 && p.naturalHeight > 0));
      var fig = p.closest('figure');
      var cap = fig && fig.querySelector('figcaption');
      if (drawn && p.id && cap && cap.textContent.trim()) { ok++; } else { bad.push(p.id || '?'); }
    });
    var h = document.documentElement;
    var shown = [];  // sections drawn with a heading and content below it
    document.querySelectorAll('section[id]').forEach(function (sec) {
      var r = sec.getBoundingClientRect();
      var head = sec.querySelector('h2');
      if (r.height > 40 && head && head.textContent.trim() &&
          sec.querySelectorAll('table, figure, p').length) { shown.push(sec.id); }
    });
    h.setAttribute('data-sections', shown.join(','));
    h.setAttribute('data-plots-total', String(plots.length));
    h.setAttribute('data-plots-ok', String(ok));
    h.setAttribute('data-plots-bad', bad.join(','));
    h.setAttribute('data-errors', String(errors.length));
    h.setAttribute('data-error-text', errors.join(' | '));
    h.setAttribute('data-height', String(document.documentElement.scrollHeight));
    h.setAttribute('data-check', 'done');
  });
})();
</script>"""


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _chrome_cmd(exe: str, profile: Path) -> list[str]:
    return [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        "--hide-scrollbars",
    ]


def _render_check(exe: str, html: str, tmp: Path, tag: str) -> tuple[dict[str, str], str]:
    page = tmp / f"check-{tag}.html"
    page.write_text(html.replace("<head>", "<head>" + _CHECKER, 1), encoding="utf-8")
    res = subprocess.run(
        _chrome_cmd(exe, tmp / f"profile-{tag}")
        + [
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
            "--window-size=1280,4000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    m = re.search(r"<html[^>]*>", res.stdout)
    assert m, res.stdout[:500]
    attrs = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', m.group(0)))
    return attrs, res.stderr


@pytest.mark.timeout(300)
def test_html_renders_in_headless_chromium(versions, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip(
            "no Chromium found (shutil.which('chromium') is None): install it with "
            "`apt-get install -y chromium` to run the rendering check"
        )
    for which, want in (
        (
            "fake",
            {
                "plot-stage-rows",
                "plot-scores",
                "plot-agreement",
                "plot-position-consistency",
                "plot-length-bias",
                "plot-length-shift",
                "plot-p-hat",
                "plot-disagreement",
                "plot-margin",
                "plot-noise",
                "plot-similarity",
            },
        ),
        (
            "planted",
            {
                "plot-stage-rows",
                "plot-scores",
                "plot-agreement",
                "plot-length-bias",
                "plot-length-shift",
                "plot-p-hat",
                "plot-disagreement",
                "plot-margin",
                "plot-noise",
            },
        ),
    ):
        out = rp.write_report(versions[which], tmp_path / f"{which}.html")
        html = out.read_text(encoding="utf-8")
        assert set(re.findall(r'<img class="plot" id="([^"]+)"', html)) == want
        attrs, stderr = _render_check(exe, html, tmp_path, which)
        assert attrs.get("data-check") == "done", attrs
        assert attrs["data-errors"] == "0", attrs.get("data-error-text")
        assert attrs["data-plots-total"] == str(len(want))
        assert attrs["data-plots-ok"] == str(len(want)), attrs["data-plots-bad"]
        # every section is drawn, the Hygiene and Length ones included
        assert attrs["data-sections"].split(",") == [k for k, _ in rp.SECTIONS], attrs
        console_errors = [
            ln for ln in stderr.splitlines() if "CONSOLE" in ln and re.search(r"Uncaught|Error", ln)
        ]
        assert console_errors == []
        shot = tmp_path / f"report-{which}.png"  # the whole page, at least 1280 x 4000
        height = min(max(int(attrs["data-height"]) + 20, 4000), 16000)
        res = subprocess.run(
            _chrome_cmd(exe, tmp_path / f"profile-shot-{which}")
            + [f"--window-size=1280,{height}", f"--screenshot={shot}", out.as_uri()],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert res.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000, res.stderr[
            -2000:
        ]
        print(f"screenshot of the {which} report: {shot}")
    # the checker itself can fail: a plot that does not decode is reported
    broken = html.replace('src="data:image/png;base64,', 'src="data:image/png;base64,AAAA', 1)
    attrs, _ = _render_check(exe, broken, tmp_path, "broken")
    assert attrs["data-plots-ok"] == str(len(want) - 1) and attrs["data-plots-bad"]
    assert int(attrs["data-errors"]) >= 1


def test_stored_report_names_its_version(versions):
    """The report.html inside a published version is rendered once publish knows the
    version: its real name, number, path and rows (probe D12: it said "dataset", "–", 0)."""
    vpath = versions["example"]
    html = (vpath / "report.html").read_text()
    manifest = store.read_manifest(vpath)
    assert "example-pairs@v1" in html and str(vpath) in html
    assert manifest["files"]["report.html"]  # hashed like the other files
    assert store.verify_version(vpath) == []
    rows = manifest["rows"]["data"]
    assert rows > 0 and f">{rows}<" in html


def test_agreement_matrix_is_cohen_kappa_on_the_common_comparisons():
    """The report's column-wise agreement matrix equals agreement and ``cohen_kappa`` over
    each pair of annotators' first verdicts on the comparisons both judged."""
    import random

    from pipeline.annotate.judge_stats import cohen_kappa
    from pipeline.report.judges import _agreement

    rng = random.Random(3)
    for _ in range(20):
        n = rng.randint(0, 200)
        cols = {
            "annotator": [f"a{rng.randint(0, 6)}" for _ in range(n)],
            "source_id": [f"s{rng.randint(0, 15)}" for _ in range(n)],
            "candidate_a": [f"c{rng.randint(0, 2)}" for _ in range(n)],
            "candidate_b": [f"c{rng.randint(0, 2)}" for _ in range(n)],
            "verdict": [rng.choice(["a", "b", "tie", None]) for _ in range(n)],
        }
        got = _agreement([pa.table(cols), pa.table(cols).slice(0, n // 3)])
        first: dict = {}
        for ann, *key, v in zip(*cols.values()):
            if v is not None:
                first.setdefault(ann, {}).setdefault(tuple(key), v)
        anns = sorted(first, key=lambda a: (-len(first[a]), a))
        if len(anns) < 2:
            assert got is None
            continue
        assert got["annotators"] == anns
        for i, x in enumerate(anns):
            for j, y in enumerate(anns):
                common = sorted(set(first[x]) & set(first[y]))
                assert got["n"][i][j] == len(common)
                if common:
                    lx = [first[x][c] for c in common]
                    ly = [first[y][c] for c in common]
                    assert got["kappa"][i][j] == cohen_kappa(lx, ly)
                    assert got["agreement"][i][j] == sum(a == b for a, b in zip(lx, ly)) / len(
                        common
                    )
