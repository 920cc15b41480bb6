"""Token tagging metrics: word accuracy (POS) and entity-level F1 (NER).

Entity F1 follows seqeval's default mode, which is the conlleval reading of
chunk tags: an ``I-`` tag after ``O`` (or after a tag of another type) opens a
new entity instead of being an error, and entities never cross a sentence
boundary. In that mode one decoder serves BIO (IOB2), IOB1 and BIOES; the
``scheme`` argument only fixes which prefixes are legal, so a tag file in the
wrong scheme fails loudly instead of being scored as something else.
"""

from collections import Counter
from collections.abc import Sequence

from alad_jax.errors import AladError

SCHEMES = {"BIO": frozenset("BI"), "IOB2": frozenset("BI"), "IOB1": frozenset("BI"), "BIOES": frozenset("BIES")}

Entity = tuple[int, str, int, int]  # (sentence index, type, first word, last word)


def _check_pairing(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> None:
    if len(gold) != len(pred):
        raise AladError(
            f"tagging metrics: {len(gold)} gold sentences but {len(pred)} predicted; predict exactly one tag sequence per sentence"
        )
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise AladError(
                f"tagging metrics: sentence {i} has {len(g)} gold tags but {len(p)} predicted; predict one tag per word"
            )


def accuracy(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> float:
    """Fraction of words whose predicted tag equals the gold tag (all sentences pooled)."""
    _check_pairing(gold, pred)
    total = sum(len(g) for g in gold)
    if total == 0:
        raise AladError("tagging metrics: no words to score; the gold data is empty")
    correct = sum(g_tag == p_tag for g, p in zip(gold, pred) for g_tag, p_tag in zip(g, p))
    return correct / total


def _split_tag(tag: str, legal: frozenset[str], where: str) -> tuple[str, str]:
    """``"B-PER"`` -> ``("B", "PER")``; ``"O"`` -> ``("O", "")``."""
    if tag == "O":
        return "O", ""
    prefix, sep, kind = tag.partition("-")
    if not sep or prefix not in legal or not kind:
        raise AladError(
            f"tagging metrics: tag {tag!r} at {where} is not O or one of {sorted(legal)} followed by '-TYPE'; "
            "check the label file or the 'scheme' argument"
        )
    return prefix, kind


def _ends_chunk(prev: str, prev_kind: str, cur: str, kind: str) -> bool:
    """Whether the entity open at the previous word closes before the current one."""
    if prev == "O":
        return False
    if prev in "ES" or cur in "BSO":
        return True
    return prev_kind != kind


def _starts_chunk(prev: str, prev_kind: str, cur: str, kind: str) -> bool:
    """Whether the current word opens an entity (conlleval: a stray I-/E- opens one too)."""
    if cur == "O":
        return False
    if cur in "BS" or prev in "OES":
        return True
    return prev_kind != kind


def entities(sentences: Sequence[Sequence[str]], *, scheme: str = "BIO") -> set[Entity]:
    """All entities as ``(sentence, type, first, last)`` with inclusive word indices."""
    if scheme not in SCHEMES:
        raise AladError(f"tagging metrics: unknown scheme {scheme!r}; use one of {sorted(SCHEMES)}")
    legal = SCHEMES[scheme]
    found = set()
    for s, tags in enumerate(sentences):
        prev, prev_kind, begin = "O", "", 0
        # A trailing "O" closes an entity that runs to the end of the sentence.
        for i, tag in enumerate([*tags, "O"]):
            cur, kind = _split_tag(tag, legal, f"sentence {s}, word {i}")
            if _ends_chunk(prev, prev_kind, cur, kind):
                found.add((s, prev_kind, begin, i - 1))
            if _starts_chunk(prev, prev_kind, cur, kind):
                begin = i
            prev, prev_kind = cur, kind
    return found


def _prf(correct: int, predicted: int, actual: int) -> tuple[float, float, float]:
    # seqeval's zero_division default: an empty denominator scores 0.
    precision = correct / predicted if predicted else 0.0
    recall = correct / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def entity_f1(
    gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], *, scheme: str = "BIO"
) -> dict:
    """Entity-level precision/recall/F1, micro over all entities and per type.

    An entity counts as correct only when type and both boundaries match. Macro
    F1 is the unweighted mean of per-type F1 over every type seen in gold or
    predictions (a type only ever predicted contributes F1 0), as seqeval does.

    Returns ``{"micro_f1", "micro_precision", "micro_recall", "macro_f1",
    "per_type": {type: {"precision", "recall", "f1", "support"}}}`` where
    ``support`` counts gold entities of that type.
    """
    _check_pairing(gold, pred)
    gold_entities = entities(gold, scheme=scheme)
    pred_entities = entities(pred, scheme=scheme)
    correct = gold_entities & pred_entities
    by_type = {
        name: Counter(e[1] for e in group)
        for name, group in (("gold", gold_entities), ("pred", pred_entities), ("correct", correct))
    }
    per_type = {}
    for kind in sorted(set(by_type["gold"]) | set(by_type["pred"])):
        p, r, f = _prf(by_type["correct"][kind], by_type["pred"][kind], by_type["gold"][kind])
        per_type[kind] = {"precision": p, "recall": r, "f1": f, "support": by_type["gold"][kind]}
    micro_p, micro_r, micro_f = _prf(len(correct), len(pred_entities), len(gold_entities))
    macro_f = sum(t["f1"] for t in per_type.values()) / len(per_type) if per_type else 0.0
    return {
        "micro_f1": micro_f,
        "micro_precision": micro_p,
        "micro_recall": micro_r,
        "macro_f1": macro_f,
        "per_type": per_type,
    }


def tagging_scores(task: str, gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], *, scheme: str = "BIO") -> dict:
    """The scores reported for a tagging task; the headline metric is listed first.

    ``"pos"`` -> ``{"accuracy"}``; ``"ner"`` -> ``{"f1", "macro_f1", "precision",
    "recall", "accuracy"}`` with entity-level micro F1 as ``"f1"``.
    """
    if task == "pos":
        return {"accuracy": accuracy(gold, pred)}
    if task == "ner":
        scores = entity_f1(gold, pred, scheme=scheme)
        return {
            "f1": scores["micro_f1"],
            "macro_f1": scores["macro_f1"],
            "precision": scores["micro_precision"],
            "recall": scores["micro_recall"],
            "accuracy": accuracy(gold, pred),
        }
    raise AladError(f"tagging metrics: unknown task {task!r}; use 'pos' or 'ner'")
