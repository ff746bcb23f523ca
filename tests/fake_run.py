"""The config overrides of a fake-engine run (no model is loaded). ``FAKE_MODELS``: a fake
policy and a fake judge; ``FAKE_RUN``: those, six pairs judged per prompt, no rubric judge.
Tests add their own input, ``data_root`` and any other keys."""

FAKE_MODELS = (
    "generate.policies.0.model.engine=fake",
    "generate.policies.0.model.model=fake-policy",
    "judge.judges.0.model.engine=fake",
    "judge.judges.0.model.model=fake-judge",
)

FAKE_RUN = ("name=fake-run", *FAKE_MODELS, "judge.max_pairs_per_prompt=6", "rubrics.judges=[]")
