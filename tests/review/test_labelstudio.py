"""The Label Studio client against a real server (``.venv-review``, started once per session
by :mod:`ls_server`): projects, tasks, two people's answers, PAT refresh and the errors."""

from __future__ import annotations

import uuid

import pytest
from ls_server import LabelStudioServer, free_port, label_studio  # noqa: F401 (fixture)

from pipeline.review import labelstudio as lsmod
from pipeline.review.labelstudio import LabelStudio, ReviewError, is_jwt
from pipeline.review.votes import annotations_to_votes
from schemas.errors import ConfigError

LABEL_CONFIG = """<View>
  <Text name="a" value="$a"/>
  <Text name="b" value="$b"/>
  <Choices name="verdict" toName="a" choice="single">
    <Choice value="A"/><Choice value="B"/><Choice value="tie"/><Choice value="both bad"/>
  </Choices>
  <TextArea name="comment" toName="a"/>
</View>"""


def verdict(choice: str, comment: str | None = None) -> list[dict]:
    """An annotation result: ``choice`` for ``verdict`` and, when given, a comment."""
    out = [{"from_name": "verdict", "to_name": "a", "type": "choices",
            "value": {"choices": [choice]}}]  # fmt: skip
    if comment is not None:
        out.append({"from_name": "comment", "to_name": "a", "type": "textarea",
                    "value": {"text": [comment]}})  # fmt: skip
    return out


def task(pair_id: str) -> dict:
    """A task shaped as pipeline.review.pick.build_tasks makes them."""
    return {
        "data": {
            "pair_id": pair_id,
            "version": "ls-test@v1",
            "a": f"response a of {pair_id}",
            "b": f"response b of {pair_id}",
            "a_id": f"{pair_id}-x",
            "b_id": f"{pair_id}-y",
            "order": "ab",
            "prompt_id": f"q-{pair_id}",
            "source_id": "s",
        }
    }


def title() -> str:
    return f"prefcurate test {uuid.uuid4().hex[:8]}"


@pytest.fixture
def admin(label_studio: LabelStudioServer):  # noqa: F811
    with label_studio.client() as c:
        yield c


@pytest.fixture
def reviewer(label_studio: LabelStudioServer):  # noqa: F811
    with label_studio.client(label_studio.reviewer_token) as c:
        yield c


def test_from_env_needs_the_key(monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="LABEL_STUDIO_API_KEY.*Personal Access Token"):
        LabelStudio.from_env()
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "0123456789abcdef0123")
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://ls.example:9000/")
    with LabelStudio.from_env() as c:
        assert c.url == "http://ls.example:9000" and "0123456789" not in repr(c)
    with LabelStudio.from_env("http://other:1") as c:
        assert c.url == "http://other:1"
    monkeypatch.delenv("LABEL_STUDIO_URL")
    with LabelStudio.from_env() as c:
        assert c.url == "http://127.0.0.1:8080"


def test_health_and_whoami(label_studio, admin, reviewer):  # noqa: F811
    assert admin.health()
    assert is_jwt(label_studio.admin_token) and is_jwt(label_studio.reviewer_token)
    assert admin.whoami()["id"] == label_studio.admin_id
    me = reviewer.whoami()
    assert me["id"] == label_studio.reviewer_id != label_studio.admin_id
    assert me["email"] == "reviewer@prefcurate.test"
    with LabelStudio(f"http://127.0.0.1:{free_port()}", "x") as down:
        assert not down.health()


def test_find_and_create_project(admin, monkeypatch):
    name = title()
    assert admin.find_project(name) is None
    longer = admin.create_project(f"{name} (other)", LABEL_CONFIG)  # the server matches substrings
    assert admin.find_project(name) is None
    pid = admin.create_project(name, LABEL_CONFIG, description="d", maximum_annotations=2)
    assert pid != longer
    admin.create_project(f"{name} (third)", LABEL_CONFIG)  # newest first: page 1 of the list
    monkeypatch.setattr(lsmod, "PAGE_SIZE", 1)  # one project a page: the match is on page 2
    assert admin.find_project(name) == pid
    assert admin.find_project(f"{name} (other)") == longer
    project = admin._json("GET", f"/api/projects/{pid}/")
    assert project["maximum_annotations"] == 2 and project["overlap_cohort_percentage"] == 100
    assert project["description"] == "d"
    single = admin._json("GET", f"/api/projects/{longer}/")
    assert single["maximum_annotations"] == 1


def test_import_in_chunks_and_list_by_pair_id(admin, monkeypatch):
    pid = admin.create_project(title(), LABEL_CONFIG)
    assert admin.task_ids_by(pid) == {}
    monkeypatch.setattr(lsmod, "IMPORT_CHUNK", 2)  # 5 tasks: 3 requests
    monkeypatch.setattr(lsmod, "TASK_PAGE_SIZE", 2)  # and 3 pages to read back
    assert admin.import_tasks(pid, [task(f"p{i}") for i in range(5)]) == 5
    ids = admin.task_ids_by(pid)
    assert sorted(ids) == [f"p{i}" for i in range(5)] and len(set(ids.values())) == 5
    assert set(admin.task_ids_by(pid, "prompt_id")) == {f"q-p{i}" for i in range(5)}
    assert admin.import_tasks(pid, []) == 0


def test_two_people_answer_and_export(label_studio, admin, reviewer):  # noqa: F811
    pid = admin.create_project(title(), LABEL_CONFIG, maximum_annotations=2)
    assert admin.import_tasks(pid, [task("p1"), task("p2"), task("p3")]) == 3
    ids = admin.task_ids_by(pid)
    assert set(ids) == {"p1", "p2", "p3"}
    a1 = admin.add_annotation(ids["p1"], verdict("A"))
    r1 = reviewer.add_annotation(ids["p1"], verdict("B", "both are long"))
    r2 = reviewer.add_annotation(ids["p2"], verdict("both bad"))
    tasks = {t["data"]["pair_id"]: t for t in admin.export_tasks(pid)}
    assert set(tasks) == {"p1", "p2", "p3"}  # every task, answered or not
    assert tasks["p1"]["id"] == ids["p1"] and tasks["p3"]["annotations"] == []
    by_user = {a["completed_by"]: a for a in tasks["p1"]["annotations"]}
    assert set(by_user) == {label_studio.admin_id, label_studio.reviewer_id}
    assert by_user[label_studio.admin_id]["id"] == a1
    assert by_user[label_studio.reviewer_id]["id"] == r1
    choices = {u: a["result"][0]["value"]["choices"] for u, a in by_user.items()}
    assert choices == {label_studio.admin_id: ["A"], label_studio.reviewer_id: ["B"]}
    assert not any(a["was_cancelled"] for a in by_user.values())
    (ann,) = tasks["p2"]["annotations"]
    assert (ann["id"], ann["completed_by"]) == (r2, label_studio.reviewer_id)
    # what the review import reads from it
    votes, info = annotations_to_votes(list(tasks.values()), "ls-test@v1")
    got = {(v["candidate_a"], v["annotator"], v["verdict"]) for v in votes.to_pylist()}
    assert got == {
        ("p1-x", f"human:{label_studio.admin_id}", "a"),
        ("p1-x", f"human:{label_studio.reviewer_id}", "b"),
        ("p2-x", f"human:{label_studio.reviewer_id}", "tie"),
    }
    assert info["unanswered"] == ["p3"]


def test_pat_survives_access_token_refresh(label_studio, admin):  # noqa: F811
    me = admin.whoami()["id"]
    first = admin._access
    assert first and first != label_studio.admin_token
    admin._access = None  # forgotten: exchanged again
    assert admin.whoami()["id"] == me and admin._access
    admin._access = first[:-6] + "AAAAAA"  # refused by the server: a 401, refreshed, retried
    assert admin.whoami()["id"] == me and admin._access != first[:-6] + "AAAAAA"


def test_wrong_tokens_are_401_without_the_token(label_studio):  # noqa: F811
    legacy = "deadbeef" * 5
    with LabelStudio(label_studio.url, legacy) as c, pytest.raises(ReviewError) as err:
        c.find_project("anything")
    assert err.value.status == 401 and err.value.path == "/api/projects/"
    assert legacy not in str(err.value) and "401" in str(err.value)
    assert "Personal Access Token" in str(err.value)  # the hint for a legacy token
    head, body, _ = label_studio.admin_token.split(".")
    forged = f"{head}.{body}.{'A' * 43}"  # a PAT with a wrong signature
    with LabelStudio(label_studio.url, forged) as c, pytest.raises(ReviewError) as err:
        c.whoami()
    assert err.value.status == 401 and "/api/token/refresh/" in str(err.value)
    assert forged not in str(err.value) and body not in str(err.value)


def test_other_errors(admin):
    with pytest.raises(ReviewError, match=r"GET /api/projects/999999/export: HTTP 404") as err:
        admin.export_tasks(999999)
    assert err.value.status == 404 and len(str(err.value)) < 400
    url = f"http://127.0.0.1:{free_port()}"
    with LabelStudio(url, "x") as down, pytest.raises(ReviewError) as err:
        down.whoami()
    msg = str(err.value)
    assert url in msg and "not reachable" in msg and err.value.status is None
    assert ".venv-review/bin/label-studio start --port 8080 --no-browser" in msg
