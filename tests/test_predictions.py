"""Saved predictions (alad_train.predictions): the file round-trips, reproduces the scores it was written
with, and a damaged or foreign file is one clear error; the report's intervals read them."""

import json

import pytest

from alad_jax.data.readers import Answer, QAExample
from alad_jax.errors import AladError
from alad_jax.metrics import squad_v2_scores, tagging_scores
from alad_train import cases, predictions
from alad_train.report import statistics

NER = [
    {"words": ["Mary", "lives", "in", "São", "Paulo"], "gold": ["B-PER", "O", "O", "B-LOC", "I-LOC"],
     "pred": ["B-PER", "O", "O", "B-LOC", "O"]},
    {"words": ["ok"], "gold": ["O"], "pred": ["B-ORG"]},
]


def test_tagging_predictions_round_trip_and_reproduce_their_score(tmp_path):
    score = tagging_scores("ner", [r["gold"] for r in NER], [r["pred"] for r in NER])["f1"]
    file = predictions.write(tmp_path, "alad_w3_frozen", "test", task="ner", records=NER, score=score)
    assert file == tmp_path / "predictions" / "alad_w3_frozen.test.jsonl"
    header, records = predictions.read(file)
    assert records == NER  # non-ASCII words included
    assert header == {"format": "alad-predictions/1", "row": "alad_w3_frozen", "split": "test", "task": "ner",
                      "metric": "f1", "score": score, "meta": {}}
    assert predictions.score_records("ner", records)["f1"] == score == pytest.approx(2 * 1 / (3 + 2))
    assert not list((tmp_path / "predictions").glob(".*tmp*"))  # the atomic write left nothing behind


def test_qa_predictions_score_as_the_official_script_on_the_examples():
    examples = [QAExample("q1", "who?", "Ana went home.", (Answer("Ana", 0),)),
                QAExample("q2", "why?", "No reason given.", ()),
                QAExample("q3", "where?", "Ana went home.", (Answer("home", 9), Answer("went home", 4)))]
    answers = {"q1": "Ana", "q2": "a reason", "q3": "home."}
    records = [{"id": e.id, "pred": answers[e.id], "answers": [a.text for a in e.answers]} for e in examples]
    assert predictions.score_records("qa", records) == squad_v2_scores(examples, answers)
    counts = statistics.unit_counts("qa", records)
    assert counts.counts[:, 0].tolist() == [100.0, 0.0, 100.0]  # per-question F1 in percent
    assert counts.value == pytest.approx(squad_v2_scores(examples, answers)["f1"])


def test_damaged_missing_or_foreign_files_are_one_clear_error(tmp_path):
    file = predictions.write(tmp_path, "teacher", "dev", task="pos", records=[{"words": ["a"], "gold": ["X"],
                                                                                 "pred": ["X"]}], score=1.0)
    file.write_text(file.read_text() + '{"words": ["b"], "gold"\n')
    with pytest.raises(AladError, match=r"teacher\.dev\.jsonl:3: not JSON"):
        predictions.read(file)
    with pytest.raises(AladError, match="no predictions file"):
        predictions.read(tmp_path / "predictions" / "nothing.test.jsonl")
    file.write_text(json.dumps({"rows": []}) + "\n")
    with pytest.raises(AladError, match=":1: not a predictions file"):
        predictions.read(file)


def test_intervals_from_saved_files_compare_the_alignment_rows(tmp_path):
    """Two sentences of 4 words; frozen is right on 4+4, the probe on 2+2 and noalign on 4+2 words."""
    gold = [["A", "B", "A", "B"], ["A", "A", "B", "B"]]

    def records(right):
        return [{"words": ["w"] * 4, "gold": g, "pred": g[:n] + ["X"] * (4 - n)} for g, n in zip(gold, right)]

    rows = {"student_probe": (2, 2), "alad_w3_frozen": (4, 4), "alad_w3_noalign_frozen": (4, 2)}
    for name, right in rows.items():
        predictions.write(tmp_path, name, "test", task="pos", records=records(right), score=sum(right) / 8)
    ids = [cases.RowId(cases.PROBE), cases.RowId(cases.FROZEN, 3), cases.RowId(cases.NOALIGN, 3),
           cases.RowId(cases.STUDENT_FT)]
    assert [row.name for row in ids[:3]] == list(rows)
    out = statistics.run_intervals(tmp_path, "pos", ids)
    by_pair = {(c["a"], c["b"]): c for c in out["comparisons"]}
    assert list(by_pair) == [("alad_w3_frozen", "student_probe"), ("alad_w3_frozen", "alad_w3_noalign_frozen")]
    vs_probe = by_pair["alad_w3_frozen", "student_probe"]
    # frozen - probe is +0.5 in either sentence, so in every resample
    assert (vs_probe["diff"], vs_probe["ci_low"], vs_probe["ci_high"]) == (0.5, 0.5, 0.5)
    assert vs_probe["verdict"] == "better" and vs_probe["unit"] == "sentences" and vs_probe["resamples"] == 10_000
    vs_noalign = by_pair["alad_w3_frozen", "alad_w3_noalign_frozen"]
    # per resample: 0 (sentence 1 twice), 0.25 or 0.5 (sentence 2 twice): the interval touches 0
    assert vs_noalign["diff"] == 0.25 and vs_noalign["ci_low"] == 0.0 and vs_noalign["ci_high"] == 0.5
    assert vs_noalign["verdict"] == "no detectable difference"
    assert out["gap_recovered"] == []  # no teacher row
