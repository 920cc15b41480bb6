"""The plan of `alad run`: which stages and rows config key `cases` needs, and how `--check` prints it."""

import re

import pytest

from alad_train.config import load_config
from alad_train import cases, plan


def _names(overrides, teacher=cases.TEACHER_FT):
    return [s.name for s in plan.make_plan(load_config(None, overrides), teacher)]


def test_default_plan_is_the_full_comparison_in_run_order():
    assert _names([]) == ["teacher", "student_probe", "student_ft", "align_w3", "continual_w3", "alad_w3_head",
                          "alad_w3_frozen", "alad_w3_joint", "alad_w3_noalign_frozen", "latency"]


def test_frozen_needs_the_teacher_and_stages_1_2_only():
    assert _names(['cases=["frozen"]']) == ["teacher", "align_w3", "continual_w3", "alad_w3_frozen", "latency"]


def test_the_ablation_alone_needs_no_alignment_stage():
    assert _names(['cases=["noalign_frozen"]', "windows=[1,3]"]) == [
        "teacher", "alad_w1_noalign_frozen", "alad_w3_noalign_frozen", "latency"]


def test_each_window_gets_its_own_alignment_stages():
    assert _names(['cases=["probe","joint"]', "windows=[1,5]"]) == [
        "teacher", "student_probe", "align_w1", "continual_w1", "alad_w1_joint", "align_w5", "continual_w5",
        "alad_w5_joint", "latency"]


def test_a_given_teacher_is_no_stage_0():
    steps = plan.make_plan(load_config(None, ['cases=["frozen"]']), cases.TEACHER_GIVEN)
    assert steps[0].name == "teacher" and steps[0].label == "teacher" and steps[0].case is cases.TEACHER_GIVEN


def test_not_trained_lists_the_rows_the_full_comparison_would_add():
    cfg = load_config(None, ['cases=["frozen"]'])
    assert plan.not_trained(cfg) == ["student_probe", "student_ft", "alad_w3_head", "alad_w3_joint",
                                     "alad_w3_noalign_frozen"]
    assert plan.not_trained(load_config(None, [])) == []


def test_the_printed_plan_says_what_is_done_what_resumes_and_what_runs(tmp_path):
    cfg = load_config(None, ['cases=["frozen"]'])
    (tmp_path / "checkpoints" / "continual_w3" / "40").mkdir(parents=True)
    progress = {"teacher": {}, "align_w3": {}}
    text = plan.format_plan(cfg, plan.make_plan(cfg, cases.TEACHER_FT), progress, tmp_path)
    lines = text.splitlines()[1:6]
    expected = {"teacher": "done", "align_w3": "done", "continual_w3": "resumes at step 40",
                "alad_w3_frozen": "to run", "latency": "to run"}
    for (name, status), line in zip(expected.items(), lines):
        assert re.search(rf" {name} +{status}  ", line), line
    assert "results.json rows: teacher, alad_w3_frozen" in text
    assert "not trained (not in cases): student_probe, student_ft, alad_w3_head" in text


def test_unknown_case_stops_load_and_plan_with_the_valid_names():
    with pytest.raises(Exception, match="use any of probe, student_ft, head, frozen, joint, noalign_frozen"):
        plan.make_plan(load_config(None, ['cases=["frozn"]']), cases.TEACHER_FT)


def test_the_shipped_smoke_config_resolves_passes_its_checks_and_plans_every_row(tmp_path):
    from pathlib import Path

    from alad_train.preflight import check_run

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "smoke.toml")
    assert (cfg.data.max_train, cfg.data.max_dev, cfg.data.max_test, cfg.windows) == (64, 32, 32, [3])
    text = check_run(cfg, tmp_path / "smoke")
    assert "results.json rows: teacher, student_probe, student_ft, alad_w3_head, alad_w3_frozen, alad_w3_joint, " \
           "alad_w3_noalign_frozen" in text
    assert not (tmp_path / "smoke").exists()
