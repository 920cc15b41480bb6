"""A teacher that tokenizes differently: what it reads per student row, its cache, and the losses.

Tokenizers (built here): the student's WordPiece one (`[CLS] un ##believ ##able [SEP]`),
an MPNet-like twin with the same pieces under other ids and `<s> </s> <pad>`
specials, and a character-level one (`<s> u n b e l ... </s>`) that cuts every
word differently. Encoders are tiny random BERTs and MPNets.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors

from alad_jax.adapter import AlignmentAdapter, align_mse, word_align_mse, word_cosine_sum
from alad_jax.cache import HiddenCache
from alad_jax.data.readers import TaggedSentence
from alad_jax.data.tagging import encode_tagging
from alad_jax.data.teacher_inputs import id_map, plan_teacher_inputs, same_vocabulary
from alad_jax.errors import AladError
from alad_jax.models.config import EncoderConfig
from alad_jax.models.modeling import build_encoder
from alad_train import models as train_models

PIECES = ["the", "cat", "##s", "un", "##believ", "##able", "run", "##ning", "dog"]
CHARS = "abcdefghijklmnopqrstuvwxyz"
WORDS = [["the", "cats", "unbelievable"], ["running", "dog"], ["the", "dog", "cat", "running", "cats", "dog"],
         ["dog"] * 9]


def _wordpiece(cls="[CLS]", sep="[SEP]", pad="[PAD]", unk="[UNK]", order=None, shift=0, pieces=PIECES):
    front = order or [unk, cls, sep, pad]
    vocab = {tok: i for i, tok in enumerate(front + [f"[unused{k}]" for k in range(shift)] + pieces)}
    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token=unk))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token=unk, cls_token=cls, sep_token=sep, pad_token=pad)


def _characters():
    vocab = {tok: i for i, tok in enumerate(["<s>", "<pad>", "</s>", "<unk>", *CHARS])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), behavior="isolated")])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", cls_token="<s>", sep_token="</s>", pad_token="<pad>")


STUDENT = _wordpiece()
MPNET_SPECIALS = {"cls": "<s>", "sep": "</s>", "pad": "<pad>", "unk": "<unk>", "order": ["<s>", "<pad>", "</s>", "<unk>"]}
TWIN = _wordpiece(**MPNET_SPECIALS, shift=3)  # MPNet-like: same pieces, ids shifted by 3, <pad> = 1
SENTENCES = [TaggedSentence(tuple(w), None, f"s{i}") for i, w in enumerate(WORDS)]


def _encoder(model_type, vocab, hidden, seed):
    config = EncoderConfig(model_type=model_type, vocab_size=vocab, hidden_size=hidden, num_layers=1, num_heads=2,
                           intermediate_size=2 * hidden, max_position_embeddings=96,
                           type_vocab_size=0 if model_type == "mpnet" else 2,
                           pad_token_id=1 if model_type == "mpnet" else 0,
                           relative_attention_num_buckets=32 if model_type == "mpnet" else 0)
    return build_encoder(config, rngs=nnx.Rngs(seed))


def _features(max_length=8, stride=2):
    # Sentence 3 (nine words) becomes overlapping windows at max_length 8.
    return encode_tagging(SENTENCES, STUDENT, None, max_length=max_length, stride=stride)


def test_id_map_sends_pieces_by_string_and_specials_by_role():
    mapping = id_map(TWIN, STUDENT)
    student_ids = STUDENT(["the cats"])["input_ids"][0]
    assert STUDENT.convert_ids_to_tokens(student_ids) == ["[CLS]", "the", "cat", "##s", "[SEP]"]
    assert TWIN.convert_ids_to_tokens(mapping[student_ids].tolist()) == ["<s>", "the", "cat", "##s", "</s>"]
    assert mapping[STUDENT.pad_token_id] == TWIN.pad_token_id == 1
    assert mapping[student_ids].tolist() == TWIN(["the cats"])["input_ids"][0]


def test_same_vocabulary_decides_and_a_twin_is_token_level_with_the_teachers_ids():
    assert same_vocabulary(STUDENT, _wordpiece()) and not same_vocabulary(TWIN, STUDENT)
    assert plan_teacher_inputs(_wordpiece(), STUDENT, WORDS, level="token").level == "same"
    plan = plan_teacher_inputs(TWIN, STUDENT, WORDS, level="token")
    assert plan.level == "token"
    features = _features()
    rows = plan.rows(features, None)
    for student_row, teacher_row, sentence in zip(features.input_ids, rows.ids, features.sentence_index):
        if len(WORDS[sentence]) < 5:  # a whole sentence: exactly the teacher's own tokenization
            assert teacher_row.tolist() == TWIN([WORDS[sentence]], is_split_into_words=True)["input_ids"][0]
        assert len(teacher_row) == len(student_row)
    batch = {"input_ids": np.array([[1, 4, 3]]), "feature_index": np.array([0])}
    np.testing.assert_array_equal(rows.add_to_batch(batch)["teacher_input_ids"], [[0, 7, 1]])  # <s> the <pad>


def test_a_pair_that_cuts_a_sentence_differently_is_one_line_naming_it():
    shorter = _wordpiece(**MPNET_SPECIALS, pieces=[p for p in PIECES if p != "##ning"])  # "running": unknown
    with pytest.raises(AladError) as error:
        plan_teacher_inputs(shorter, STUDENT, WORDS, level="token", names=("T", "S"))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("T and S cut sentence 1 ('running dog') into different word pieces")
    assert 'alignment.level = "word"' in message
    assert plan_teacher_inputs(shorter, STUDENT, WORDS, level="word").level == "word"


def test_word_rows_give_row_relative_word_ids_on_both_sides():
    features = _features()
    rows = plan_teacher_inputs(_characters(), STUDENT, WORDS, level="word", max_length=24).rows(features, SENTENCES)
    # Row 0: [CLS] the cat ##s un ##believ ##able [SEP] / <s> t h e c a t s u n b e l i e v a b l e </s>.
    np.testing.assert_array_equal(rows.student_words[0], [-1, 0, 1, 1, 2, 2, 2, -1])
    assert rows.teacher_words[0].tolist() == [-1] + [0] * 3 + [1] * 4 + [2] * 12 + [-1]
    np.testing.assert_array_equal(rows.target_words[0], rows.student_words[0])
    # A later window of the nine-word sentence starts at a later word: its ids start at 0 again.
    windows = [r for r in range(len(features)) if features.sentence_index[r] == 3]
    assert len(windows) > 1
    for r in windows:
        present = rows.student_words[r][rows.student_words[r] >= 0]
        assert present.min() == 0 and rows.ids[r][0] == 0  # <s>
    # A teacher row cut by its length limit: the student's words it lost are no target.
    cut = plan_teacher_inputs(_characters(), STUDENT, WORDS, level="word", max_length=9).rows(features, SENTENCES)
    assert cut.target_words[0].tolist() == [-1, 0, 1, 1, -1, -1, -1, -1]  # "unbelievable" lost
    batch = cut.add_to_batch({"input_ids": np.zeros((2, 8), np.int32), "feature_index": np.array([0, -1])})
    assert batch["teacher_input_ids"].shape == (2, 32) and batch["teacher_attention_mask"][0].sum() == 9
    assert (batch["teacher_word_ids"][1] == -1).all() and (batch["word_ids"][1] == -1).all()


@pytest.mark.parametrize("teacher_tokenizer", ["twin", "characters"])
def test_cached_and_uncached_alignment_losses_agree(teacher_tokenizer, tmp_path):
    """The cache path (teacher word means stored at student tokens) == the raw path (teacher on its own rows)."""
    tokenizer = TWIN if teacher_tokenizer == "twin" else _characters()
    level = "token" if teacher_tokenizer == "twin" else "word"
    features = _features(max_length=16, stride=4)
    rows = plan_teacher_inputs(tokenizer, STUDENT, WORDS, level=level, max_length=64).rows(features, SENTENCES)
    student = _encoder("bert", len(STUDENT), 8, 0)
    teacher = _encoder("mpnet", len(tokenizer), 12, 1)
    adapter = AlignmentAdapter(8, 12, 3, 16, rngs=nnx.Rngs(2))
    cache = HiddenCache.build(tmp_path, features.input_ids, student, teacher, buckets=(16,), **rows.cache_kwargs())
    from alad_jax.data.batching import make_batches

    batch = make_batches(features, batch_size=len(features), buckets=(16,))[0]
    raw = rows.add_to_batch(batch)
    cached = cache.gather(rows.add_to_batch(batch, teacher_ids=False))
    key = None
    loss_raw, metrics_raw = train_models.align_loss(train_models.AlignModel(student, teacher, adapter), raw, key)
    loss_cached, metrics_cached = train_models.cached_align_loss(adapter, cached, key)
    # bf16 cache against f32: close, not equal.
    assert float(loss_cached) == pytest.approx(float(loss_raw), rel=2e-2)
    assert float(metrics_cached["cosine"]) == pytest.approx(float(metrics_raw["cosine"]), abs=1e-2)
    sq, cos, count = (float(x) for x in train_models.align_eval(*nnx.split(adapter), cached))
    assert sq / count == pytest.approx(float(loss_cached), rel=1e-5)
    if level == "token":  # every real token counts, specials included
        assert count == sum(len(r) for r in features.input_ids)
    else:  # every word of every window once
        assert count == sum(len(set(w[w >= 0].tolist())) for w in rows.target_words)


def test_word_level_equals_the_token_level_pooled_form_when_tokenizers_agree(tmp_path):
    """With the twin at word level, the pipeline's word loss is the token-level loss on per-word means."""
    features = _features(max_length=16, stride=4)
    student = _encoder("bert", len(STUDENT), 8, 0)
    teacher = _encoder("mpnet", len(TWIN), 12, 1)
    adapter = AlignmentAdapter(8, 12, 3, 16, rngs=nnx.Rngs(2))
    word_rows = plan_teacher_inputs(TWIN, STUDENT, WORDS, level="word").rows(features, SENTENCES)
    token_rows = plan_teacher_inputs(TWIN, STUDENT, WORDS, level="token").rows(features, SENTENCES)
    # Whole sentences re-tokenized by the teacher are the mapped student rows.
    for r, sentence in enumerate(features.sentence_index):
        if len(WORDS[sentence]) < 9:
            np.testing.assert_array_equal(word_rows.ids[r], token_rows.ids[r])
    from alad_jax.data.batching import make_batches

    batch = make_batches(features, batch_size=len(features), buckets=(16,))[0]
    word_batch = word_rows.add_to_batch(batch)
    loss, _ = train_models.align_loss(train_models.AlignModel(student, teacher, adapter), word_batch, None)
    # By hand: token-level teacher states on the teacher's ids, pooled per student word on both sides.
    pred, target = train_models.AlignModel(student, teacher, adapter)(token_rows.add_to_batch(batch))
    words = word_batch["word_ids"]
    pooled_p, pooled_t, present = [], [], []
    for b in range(words.shape[0]):
        for w in range(words.shape[1]):
            at = words[b] == w
            present.append(at.any())
            pooled_p.append(np.asarray(pred[b])[at].mean(0) if at.any() else np.zeros(12))
            pooled_t.append(np.asarray(target[b])[at].mean(0) if at.any() else np.zeros(12))
    want = align_mse(np.array(pooled_p)[None], np.array(pooled_t)[None], np.array(present)[None])
    assert float(loss) == pytest.approx(float(want), rel=1e-4)
    assert float(loss) == pytest.approx(float(word_align_mse(pred, target, words, words, 16)), rel=1e-5)
    _, count = word_cosine_sum(pred, target, words, words, 16)
    assert float(count) == sum(len(set(w[w >= 0].tolist())) for w in word_rows.student_words)
    assert jnp.isfinite(loss)
