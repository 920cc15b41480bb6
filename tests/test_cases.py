"""The case table: every row's recipe in one place, row names that parse back, and the run's models found by it."""

import dataclasses
import json

import pytest
from flax import nnx

from alad_train.config import StagesConfig
from alad_jax.errors import AladError
from alad_train import cases


def test_every_case_names_a_stage_config_and_a_known_encoder_and_adapter():
    stages = {f.name for f in dataclasses.fields(StagesConfig)}
    for case in cases.CASES:
        assert case.stage in stages, case
        assert case.encoder in (cases.TEACHER, cases.STUDENT)
        assert case.adapter in (None, cases.CONTINUAL, cases.FRESH)


def test_the_paper_cases_train_what_section_2_says():
    assert cases.PROBE.trains == ("head",) and not cases.PROBE.windowed
    assert cases.HEAD.trains == ("head",) and cases.HEAD.adapter == cases.CONTINUAL
    assert cases.FROZEN.trains == ("adapter", "head") and cases.FROZEN.frozen_student
    assert cases.JOINT.trains_encoder and not cases.JOINT.frozen_student
    assert cases.NOALIGN.adapter == cases.FRESH and cases.NOALIGN.stage == cases.FROZEN.stage
    assert cases.STUDENT_FT.trains_encoder and not cases.STUDENT_FT.windowed
    assert [c.name for c in cases.BASELINES] == ["probe", "student_ft"]
    assert [c.name for c in cases.WINDOWED] == ["head", "frozen", "joint", "noalign_frozen"]


def test_a_row_id_names_its_row_and_round_trips_through_its_record():
    assert cases.RowId(cases.FROZEN, 3).name == "alad_w3_frozen" == cases.FROZEN.row_name(3)
    assert cases.RowId(cases.NOALIGN, 5).name == "alad_w5_noalign_frozen"
    assert cases.RowId(cases.PROBE).name == "student_probe" and cases.RowId(cases.TEACHER_GIVEN).name == "teacher"
    for case in cases.CASES:
        row = cases.RowId(case, 5 if case.windowed else None)
        assert cases.RowId.of_record({"name": row.name, **row.record()}) == row
    rows = [cases.RowId(cases.TEACHER_FT), cases.RowId(cases.FROZEN, 5), cases.RowId(cases.JOINT, 3),
            cases.RowId(cases.PROBE)]
    assert cases.windows_in(rows) == [3, 5]
    with pytest.raises(ValueError, match="needs a window"):
        cases.FROZEN.row_name()
    with pytest.raises(ValueError, match="has no window"):
        cases.RowId(cases.PROBE, 3)
    with pytest.raises(AladError, match="re-run alad run"):  # a results.json row without its identity fields
        cases.RowId.of_record({"name": "alad_w3_frozen"})


class _Model(nnx.Module):
    def __init__(self):
        self.encoder = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
        self.adapter = nnx.Linear(2, 2, rngs=nnx.Rngs(1))
        self.head = nnx.Linear(2, 2, rngs=nnx.Rngs(2))


@pytest.mark.parametrize("case", cases.CASES, ids=lambda c: c.name)
def test_a_cases_filter_selects_exactly_the_parts_it_trains(case):
    trainable = nnx.state(_Model(), case.trainable)
    moved = {str(path[0]) for path, _ in nnx.to_flat_state(trainable)}
    assert moved == ({"encoder", "adapter", "head"} if case.trains_encoder else set(case.trains or ()))


def test_model_dir_finds_the_case_not_its_lookalike(tmp_path):
    models = tmp_path / "models"
    for case, k in ((cases.FROZEN, 3), (cases.NOALIGN, 3), (cases.JOINT, 3), (cases.JOINT, 5)):
        name = cases.RowId(case, k).name
        (models / name).mkdir(parents=True)
        (models / name / "alad.json").write_text(json.dumps({"window": k}))  # a saved model records its AlAd's K
    assert cases.model_dir(tmp_path, "frozen") == models / "alad_w3_frozen"
    assert cases.model_dir(tmp_path, "noalign_frozen") == models / "alad_w3_noalign_frozen"
    assert cases.model_dir(tmp_path, "joint", window=5) == models / "alad_w5_joint"
    with pytest.raises(AladError, match="several windows"):
        cases.model_dir(tmp_path, "joint")
    with pytest.raises(AladError, match="not a case with a saved AlAd model"):
        cases.model_dir(tmp_path, "probe")


def test_a_given_teacher_trains_nothing_and_keeps_its_head():
    assert cases.TEACHER_GIVEN.trains is None and not cases.TEACHER_GIVEN.trains_encoder
    assert cases.TEACHER_GIVEN.head == cases.GIVEN and cases.TEACHER_GIVEN.row_name() == "teacher"
    assert not nnx.to_flat_state(nnx.state(_Model(), cases.TEACHER_GIVEN.trainable))


def test_only_the_cases_that_start_from_stage_2_need_the_alignment_stages():
    assert [c.name for c in cases.SELECTABLE if c.aligned] == ["head", "frozen", "joint"]


def test_config_default_selects_every_case():
    """The embedded default stays the full comparison."""
    from alad_train.config import Config

    assert Config().cases == ["all"] and cases.selected(Config().cases) == cases.SELECTABLE
    assert cases.selected(["probe", "student_ft", "head", "frozen", "joint", "noalign_frozen"]) == cases.SELECTABLE


@pytest.mark.parametrize("names, expected", [
    (["frzen"], "unknown case 'frzen'; use any of probe, student_ft, head, frozen, joint, noalign_frozen"),
    (["teacher"], "unknown case 'teacher'"),
    ([], "is empty"),
    (["all", "frozen"], "unknown case 'all'"),
    (["frozen", "frozen"], "repeats a case"),
])
def test_a_bad_cases_list_is_one_line_naming_the_valid_cases(names, expected):
    with pytest.raises(AladError, match=expected.replace("(", r"\(")) as error:
        cases.selected(names)
    assert "\n" not in str(error.value) and "config key 'cases'" in str(error.value)


def test_selected_cases_keep_the_run_order_not_the_list_order():
    assert cases.selected(["noalign_frozen", "probe", "frozen"]) == (cases.PROBE, cases.FROZEN, cases.NOALIGN)
