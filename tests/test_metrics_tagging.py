"""Word accuracy and seqeval-style entity F1, against hand-computed values."""

import random

import pytest

from alad_jax.errors import AladError
from alad_jax.metrics.tagging import accuracy, entities, entity_f1, tagging_scores


def test_accuracy_pools_words_over_sentences():
    gold = [["DET", "NOUN", "VERB"], ["PRON", "VERB", "ADV", "PUNCT", "NOUN"]]
    pred = [["DET", "NOUN", "NOUN"], ["PRON", "VERB", "ADV", "PUNCT", "NOUN"]]
    assert accuracy(gold, pred) == pytest.approx(7 / 8)


def test_length_mismatch_names_the_sentence():
    with pytest.raises(AladError, match="sentence 1 has 2 gold tags but 1 predicted"):
        accuracy([["A"], ["A", "B"]], [["A"], ["A"]])
    with pytest.raises(AladError, match="2 gold sentences but 1 predicted"):
        entity_f1([["O"], ["O"]], [["O"]])


def test_type_mismatch_costs_precision_and_recall():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-ORG", "I-ORG", "O", "B-LOC"]]
    scores = entity_f1(gold, pred)
    assert scores["micro_precision"] == pytest.approx(0.5)
    assert scores["micro_recall"] == pytest.approx(0.5)
    assert scores["micro_f1"] == pytest.approx(0.5)
    assert scores["per_type"]["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert scores["per_type"]["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert scores["per_type"]["LOC"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    # A type seen only in predictions still counts in the macro mean, as in seqeval.
    assert scores["macro_f1"] == pytest.approx(1 / 3)


def test_boundary_error_is_a_wrong_entity():
    gold = [["B-PER", "I-PER", "I-PER", "O", "B-LOC", "I-LOC"]]
    pred = [["B-PER", "I-PER", "O", "O", "O", "B-LOC"]]
    scores = entity_f1(gold, pred)
    assert scores["micro_f1"] == 0.0
    assert scores["per_type"]["PER"]["support"] == 1


def test_i_tag_after_o_or_other_type_starts_an_entity():
    assert entities([["O", "I-PER", "I-PER", "O"]]) == {(0, "PER", 1, 2)}
    assert entities([["I-PER", "I-LOC", "I-LOC"]]) == {(0, "PER", 0, 0), (0, "LOC", 1, 2)}
    assert entities([["B-PER", "I-PER", "B-PER"]]) == {(0, "PER", 0, 1), (0, "PER", 2, 2)}
    gold = [["O", "B-PER", "I-PER", "O"]]
    pred = [["O", "I-PER", "I-PER", "O"]]
    assert entity_f1(gold, pred)["micro_f1"] == 1.0


def test_entities_do_not_cross_sentences():
    assert entities([["O", "B-PER"], ["I-PER", "O"]]) == {(0, "PER", 1, 1), (1, "PER", 0, 0)}


def test_iob1_b_tag_separates_adjacent_entities_of_one_type():
    tags = [["I-PER", "I-PER", "B-PER", "O", "I-LOC"]]
    assert entities(tags, scheme="IOB1") == {(0, "PER", 0, 1), (0, "PER", 2, 2), (0, "LOC", 4, 4)}


def test_bioes_chunks():
    tags = [["B-PER", "E-PER", "S-LOC", "O", "B-ORG", "I-ORG", "E-ORG", "S-PER", "E-MISC", "E-MISC"]]
    assert entities(tags, scheme="BIOES") == {
        (0, "PER", 0, 1),
        (0, "LOC", 2, 2),
        (0, "ORG", 4, 6),
        (0, "PER", 7, 7),
        (0, "MISC", 8, 8),
        (0, "MISC", 9, 9),
    }
    gold = [["B-PER", "E-PER", "O", "S-LOC"]]
    pred = [["B-PER", "I-PER", "O", "S-LOC"]]  # I- at the end closes the entity just as E- would
    assert entity_f1(gold, pred, scheme="BIOES")["micro_f1"] == 1.0


def test_tag_outside_the_scheme_is_an_error():
    with pytest.raises(AladError, match="'S-PER' at sentence 0, word 1"):
        entity_f1([["O", "S-PER"]], [["O", "O"]], scheme="BIO")
    with pytest.raises(AladError, match="unknown scheme"):
        entity_f1([["O"]], [["O"]], scheme="BILOU")


def test_micro_weights_entities_macro_weights_types():
    gold = [["B-PER", "O", "B-PER", "O", "B-PER", "O", "B-LOC", "I-LOC"]]
    pred = [["B-PER", "O", "B-PER", "O", "B-PER", "O", "O", "O"]]
    scores = entity_f1(gold, pred)
    assert scores["micro_precision"] == 1.0
    assert scores["micro_recall"] == pytest.approx(0.75)
    assert scores["micro_f1"] == pytest.approx(2 * 0.75 / 1.75)
    assert scores["macro_f1"] == pytest.approx(0.5)
    assert scores["per_type"]["LOC"]["support"] == 1


def test_tagging_scores_per_task():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "I-PER", "O", "O"]]
    assert tagging_scores("pos", gold, pred) == {"accuracy": 0.75}
    ner = tagging_scores("ner", gold, pred)
    assert ner == pytest.approx(
        {"f1": 2 / 3, "macro_f1": 0.5, "precision": 1.0, "recall": 0.5, "accuracy": 0.75}
    )
    with pytest.raises(AladError, match="unknown task 'qa'"):
        tagging_scores("qa", gold, pred)


def _random_tags(rng: random.Random, prefixes: str, n_sentences: int) -> list[list[str]]:
    types = ["PER", "LOC", "ORG"]
    return [
        [
            "O" if rng.random() < 0.4 else f"{rng.choice(prefixes)}-{rng.choice(types)}"
            for _ in range(rng.randint(1, 12))
        ]
        for _ in range(n_sentences)
    ]


@pytest.mark.parametrize("scheme,prefixes", [("BIO", "BI"), ("BIOES", "BIES")])
def test_matches_seqeval_default_mode_on_random_tags(scheme, prefixes):
    seqeval_metrics = pytest.importorskip("seqeval.metrics")
    rng = random.Random(0)
    for _ in range(20):
        gold = _random_tags(rng, prefixes, 8)
        pred = [
            [tag if rng.random() < 0.7 else rng.choice(["O", f"{rng.choice(prefixes)}-PER"]) for tag in sentence]
            for sentence in gold
        ]
        ours = entity_f1(gold, pred, scheme=scheme)
        assert ours["micro_f1"] == pytest.approx(seqeval_metrics.f1_score(gold, pred))
        assert ours["micro_precision"] == pytest.approx(seqeval_metrics.precision_score(gold, pred))
        assert ours["micro_recall"] == pytest.approx(seqeval_metrics.recall_score(gold, pred))
        assert ours["macro_f1"] == pytest.approx(seqeval_metrics.f1_score(gold, pred, average="macro"))
        report = seqeval_metrics.classification_report(gold, pred, output_dict=True)
        for kind, row in ours["per_type"].items():
            assert row["f1"] == pytest.approx(report[kind]["f1-score"])
            assert row["support"] == report[kind]["support"]
