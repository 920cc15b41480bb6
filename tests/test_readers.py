"""Readers on small hand-written files: the tricky cases of each format, and every error."""

import pathlib
import re
import sys
import types

import datasets
import pytest

from alad_jax.data import hub_datasets
from alad_jax.data.readers import (
    Answer,
    TaggedSentence,
    detect_tag_scheme,
    read_conll,
    read_conllu,
    read_squad,
    read_text,
)
from alad_jax.data.sources import read_dataset
from alad_jax.errors import AladError

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "data"


def write(tmp_path, name: str, text: str, newline: str = "\n") -> pathlib.Path:
    path = tmp_path / name
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


# --------------------------------------------------------------------------- CoNLL


def test_conll_skips_docstart_and_breaks_on_whitespace_only_lines():
    path = FIXTURES / "conll2003_bio.conll"
    sentences = read_conll(path)
    assert [s.words for s in sentences] == [
        ("EU", "rejects", "German", "call", "."),
        ("Peter", "Blackburn"),
        ("#hashtag", "BRUSSELS"),  # '#' starts a word here, not a comment
    ]
    assert [s.tags for s in sentences] == [
        ("B-ORG", "O", "B-MISC", "O", "O"),
        ("B-PER", "I-PER"),
        ("O", "B-LOC"),
    ]
    assert [s.source for s in sentences] == [f"{path}:3", f"{path}:9", f"{path}:14"]


def test_conll_reads_the_requested_columns():
    sentences = read_conll(FIXTURES / "conll2003_bio.conll", token_col=0, tag_col=1, scheme="none")
    assert sentences[0].tags == ("NNP", "VBZ", "JJ", "NN", ".")
    chunks = read_conll(FIXTURES / "conll2003_bio.conll", tag_col=2, scheme="BIO")
    assert chunks[1].tags == ("B-NP", "I-NP")


def test_conll_detects_iob1_and_keeps_its_tags():
    sentences = read_conll(FIXTURES / "iob1.conll")
    assert sentences[0].tags == ("I-PER", "I-PER", "O", "I-PER", "B-PER", "O", "I-LOC")
    assert detect_tag_scheme([s.tags for s in sentences]) == "IOB1"


def test_conll_reads_bioes():
    sentences = read_conll(FIXTURES / "bioes.conll", scheme="BIOES")
    assert [s.tags for s in sentences] == [("B-LOC", "E-LOC", "O", "O"), ("S-PER", "O")]
    assert detect_tag_scheme([s.tags for s in sentences]) == "BIOES"


def test_detect_tag_scheme_names_each_scheme():
    assert detect_tag_scheme([["B-PER", "I-PER", "O", "B-LOC"]]) == "BIO"
    assert detect_tag_scheme([["I-PER", "B-PER", "O"]]) == "IOB1"
    assert detect_tag_scheme([["S-PER", "O", "B-LOC", "E-LOC"]]) == "BIOES"
    assert detect_tag_scheme([["NOUN", "VERB", "PUNCT"]]) == "none"


def test_conll_reads_crlf_line_ends(tmp_path):
    path = write(tmp_path, "crlf.conll", "a\tB-X\nb\tI-X\n\t\nc\tO\n", newline="\r\n")
    sentences = read_conll(path)
    assert [(s.words, s.tags) for s in sentences] == [(("a", "b"), ("B-X", "I-X")), (("c",), ("O",))]


def test_conll_ragged_columns_name_file_and_line(tmp_path):
    path = write(tmp_path, "ragged.conll", "EU NNP B-ORG\nrejects O\n")
    with pytest.raises(AladError, match=rf"{re.escape(str(path))}:2: expected 3 columns \(as on line 1\), found 2"):
        read_conll(path)


def test_conll_malformed_tag_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad_tag.conll", "EU\tB-ORG\nrejects\tO\n\nPeter\tB_PER\n")
    with pytest.raises(AladError, match=rf"{re.escape(str(path))}:4: tag 'B_PER' is not 'O' or B-TYPE or I-TYPE"):
        read_conll(path)


def test_conll_bio_violation_names_line_and_suggests_iob1(tmp_path):
    path = write(tmp_path, "iob1_as_bio.conll", "met\tO\nJohn\tI-PER\n")
    with pytest.raises(AladError, match=rf"{re.escape(str(path))}:2: 'I-PER' follows 'O'.*scheme='IOB1'"):
        read_conll(path, scheme="BIO")


def test_conll_bioes_chunk_left_open_is_an_error(tmp_path):
    path = write(tmp_path, "open.conll", "New\tB-LOC\nYork\tI-LOC\n")
    with pytest.raises(AladError, match=rf"{re.escape(str(path))}:2: sentence ends inside a chunk"):
        read_conll(path, scheme="BIOES")


def test_conll_single_column_is_an_error(tmp_path):
    path = write(tmp_path, "one.conll", "word\n")
    with pytest.raises(AladError, match=rf"{re.escape(str(path))}:1: line has 1 column\(s\).*format 'text'"):
        read_conll(path)


@pytest.mark.parametrize("text", ["", "\n\t\n  \n", "-DOCSTART- O\n\n"])
def test_conll_empty_file_is_an_error(tmp_path, text):
    path = write(tmp_path, "empty.conll", text)
    with pytest.raises(AladError, match=rf"{re.escape(str(path))}: no sentences found"):
        read_conll(path)


def test_conll_unknown_scheme_lists_the_valid_ones():
    with pytest.raises(AladError, match="unknown tag scheme 'BILOU'.*BIO, IOB2, IOB1, BIOES"):
        read_conll(FIXTURES / "iob1.conll", scheme="BILOU")


def test_conll_tab_separated_words_may_hold_spaces_and_space_separated_files_still_read(tmp_path):
    tabbed = write(tmp_path, "tabbed.conll", "com\tADP\n100 000\tNUM\n pessoas \t NOUN \n")
    assert read_conll(tabbed, scheme="none")[0].words == ("com", "100 000", "pessoas")
    assert read_conll(tabbed, scheme="none")[0].tags == ("ADP", "NUM", "NOUN")
    spaced = write(tmp_path, "spaced.conll", "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n")
    (sentence,) = read_conll(spaced)
    assert sentence.words == ("EU", "rejects") and sentence.tags == ("B-ORG", "O")


def test_missing_file_and_bad_encoding_are_named(tmp_path):
    with pytest.raises(AladError, match=r"nope.conll: file not found"):
        read_conll(tmp_path / "nope.conll")
    path = tmp_path / "latin1.conll"
    path.write_bytes("a\tO\n\nS\xe3o\tB-LOC\n".encode("latin-1"))
    with pytest.raises(AladError, match=rf"{re.escape(str(path))}:3: not valid UTF-8"):
        read_conll(path)


# --------------------------------------------------------------------------- CoNLL-U


def test_conllu_uses_syntactic_words_and_skips_ranges_empty_nodes_and_comments():
    path = FIXTURES / "ud_sample.conllu"
    sentences = read_conllu(path)
    assert sentences[0].words == ("Vamos", "a", "a", "praia", ".")  # "à" = "a" + "a"
    assert sentences[0].tags == ("VERB", "ADP", "DET", "NOUN", "PUNCT")
    assert sentences[1].words == ("Ele", "foi", "e", "ela", "também", "com", "100 000", "pessoas", ".")
    assert sentences[1].tags == ("PRON", "VERB", "CCONJ", "PRON", "ADV", "ADP", "NUM", "NOUN", "PUNCT")
    assert [s.source for s in sentences] == [f"{path}:4", f"{path}:13"]


def test_conllu_reads_xpos():
    sentences = read_conllu(FIXTURES / "ud_sample.conllu", tag="xpos")
    assert sentences[0].tags == ("V", "PREP", "ART", "N", "PU")


def test_conllu_missing_xpos_says_to_use_upos(tmp_path):
    path = write(tmp_path, "noxpos.conllu", "1\tEu\teu\tPRON\t_\t_\t_\t_\t_\t_\n")
    with pytest.raises(AladError, match=rf"{re.escape(str(path))}:1: XPOS column is '_'.*use tag='upos'"):
        read_conllu(path, tag="xpos")


def test_conllu_needs_ten_columns(tmp_path):
    path = write(tmp_path, "nine.conllu", "# c\n1\tEu\teu\tPRON\t_\t_\t_\t_\t_\t_\n2\tsei\tsaber\tVERB\t_\t_\t_\t_\t_\n")
    with pytest.raises(AladError, match=rf"{re.escape(str(path))}:3: expected 10 tab-separated CoNLL-U columns, found 9"):
        read_conllu(path)


def test_conllu_ids_must_be_consecutive(tmp_path):
    line = "\tw\tw\tNOUN\t_\t_\t_\t_\t_\t_\n"
    path = write(tmp_path, "gap.conllu", "1" + line + "3" + line)
    with pytest.raises(AladError, match=rf"{re.escape(str(path))}:2: word id '3' where 2 was expected"):
        read_conllu(path)


def test_conllu_empty_file_is_an_error(tmp_path):
    path = write(tmp_path, "empty.conllu", "# only a comment\n\n")
    with pytest.raises(AladError, match=rf"{re.escape(str(path))}: no sentences found"):
        read_conllu(path)


# --------------------------------------------------------------------------- text


def test_text_splits_words_and_skips_blank_lines():
    path = FIXTURES / "sentences.txt"
    sentences = read_text(path)
    assert [s.words for s in sentences] == [
        ("The", "first", "sentence", "."),
        ("second", "line", "with", "spaces"),
        ("third",),
    ]
    assert all(s.tags is None for s in sentences)
    assert [s.source for s in sentences] == [f"{path}:1", f"{path}:3", f"{path}:5"]


def test_text_empty_file_is_an_error(tmp_path):
    path = write(tmp_path, "empty.txt", "\n \n")
    with pytest.raises(AladError, match=rf"{re.escape(str(path))}: no sentences found"):
        read_text(path)


# --------------------------------------------------------------------------- SQuAD


def test_squad_keeps_unanswerable_and_all_answers():
    examples = read_squad(FIXTURES / "squad_v2_sample.json")
    assert [e.id for e in examples] == ["q1", "q2", "q3"]
    assert examples[0].answers == (Answer("Rio Grande do Sul", 31), Answer("Rio Grande do Sul.", 31))
    assert examples[1].answers == ()  # is_impossible: plausible answers are not answers
    assert examples[2].answers == (Answer("Guaíba", 4),)
    assert examples[0].title == "Porto_Alegre"
    assert examples[2].context == "The Guaíba lake borders the city."


def test_squad_answer_start_mismatch_names_the_question(tmp_path):
    doc = '{"data": [{"paragraphs": [{"context": "abc def", "qas": [{"id": "qx", "question": "?", "answers": [{"text": "def", "answer_start": 3}]}]}]}]}'
    path = write(tmp_path, "bad.json", doc)
    with pytest.raises(AladError, match=r"question 'qx': answer 'def' is not at answer_start=3 .*found ' de'"):
        read_squad(path)


def test_squad_invalid_json_names_the_line(tmp_path):
    path = write(tmp_path, "broken.json", '{"data": [\n  {"paragraphs": ]\n}')
    with pytest.raises(AladError, match=rf"{re.escape(str(path))}:2: invalid JSON"):
        read_squad(path)


def test_squad_missing_key_and_unmarked_empty_answers_are_errors(tmp_path):
    path = write(tmp_path, "nokey.json", '{"data": [{"paragraphs": [{"qas": []}]}]}')
    with pytest.raises(AladError, match=r"data\[0\].paragraphs\[0\]: missing key 'context'"):
        read_squad(path)
    doc = '{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "q9", "question": "?", "answers": []}]}]}]}'
    path = write(tmp_path, "noanswer.json", doc)
    with pytest.raises(AladError, match=r"question 'q9' has no answers and is not marked is_impossible"):
        read_squad(path)


def test_squad_duplicate_ids_are_an_error(tmp_path):
    qa = '{"id": "same", "question": "?", "answers": [{"text": "c", "answer_start": 0}]}'
    path = write(tmp_path, "dup.json", f'{{"data": [{{"paragraphs": [{{"context": "c", "qas": [{qa}, {qa}]}}]}}]}}')
    with pytest.raises(AladError, match=r"duplicate question id 'same'"):
        read_squad(path)


# --------------------------------------------------------------------------- dispatch


def test_read_dataset_dispatches_by_format():
    assert read_dataset("conll", str(FIXTURES / "bioes.conll"), scheme="BIOES")[1].tags == ("S-PER", "O")
    assert read_dataset("conllu", str(FIXTURES / "ud_sample.conllu"), tag="xpos")[0].tags[0] == "V"
    assert len(read_dataset("text", str(FIXTURES / "sentences.txt"))) == 3
    assert read_dataset("squad", str(FIXTURES / "squad_v2_sample.json"))[1].answers == ()


def test_read_dataset_rejects_unknown_format_and_option():
    with pytest.raises(AladError, match="unknown data format 'csv'; use one of conll, conllu, text, squad, hf, tfds, packaged"):
        read_dataset("csv", "x.csv")
    with pytest.raises(AladError, match="unknown option 'tag' for data format 'conll'; valid options: token_col, tag_col, scheme"):
        read_dataset("conll", str(FIXTURES / "bioes.conll"), tag="upos")


def test_tagged_sentence_rejects_mismatched_tags():
    with pytest.raises(AladError, match="f.txt:3: 2 words but 1 tags"):
        TaggedSentence(("a", "b"), ("O",), "f.txt:3")


# --------------------------------------------------------------------------- Hugging Face / TFDS (in memory)


def _ner_dataset():
    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER"])),
        }
    )
    return datasets.Dataset.from_dict(
        {"tokens": [["Ana", "Lima", "disse"], [], ["oi"]], "ner_tags": [[1, 2, 0], [], [0]]}, features=features
    )


def test_hf_tagging_converts_class_label_ids_to_names():
    sentences = hub_datasets.load_hf_tagging("conll2003", "train", dataset=_ner_dataset())
    assert [(s.words, s.tags) for s in sentences] == [(("Ana", "Lima", "disse"), ("B-PER", "I-PER", "O")), (("oi",), ("O",))]
    assert sentences[1].source == "hf:conll2003[train] row 2"  # row 1 was empty: skipped and counted


def test_hf_tagging_uses_presets_and_string_tags():
    ud = datasets.Dataset.from_dict({"tokens": [["Eu", "sei"]], "upos": [["PRON", "VERB"]], "xpos": [["_", "_"]]})
    assert hub_datasets.load_hf_tagging("universal_dependencies", "train", config="de_gsd", dataset=ud)[0].tags == ("PRON", "VERB")
    multiconer = datasets.Dataset.from_dict(
        {"id": ["0"], "tokens": [["the", "louvre"]], "ner_tags": [["O", "B-Facility"]], "ner_tags_index": [[0, 1]]}
    )
    assert hub_datasets.load_hf_tagging("MultiCoNER/multiconer_v2", "train", dataset=multiconer)[0].tags == ("O", "B-Facility")


def test_hf_missing_split_and_column_are_named():
    dd = datasets.DatasetDict(train=_ner_dataset(), validation=_ner_dataset())
    with pytest.raises(AladError, match=r"hf:wnut_17: no split 'test'; it has train, validation"):
        hub_datasets.load_hf_tagging("wnut_17", "test", dataset=dd)
    with pytest.raises(AladError, match=r"hf:wnut_17\[train\]: no column 'labels'; it has tokens, ner_tags"):
        hub_datasets.load_hf_tagging("wnut_17", "train", tags_column="labels", dataset=dd)


def test_hf_integer_tags_without_names_are_an_error():
    ds = datasets.Dataset.from_dict({"tokens": [["a"]], "ner_tags": [[3]]})
    with pytest.raises(AladError, match=r"row 0: column 'ner_tags' holds integer ids without ClassLabel names"):
        hub_datasets.load_hf_tagging("mine", "train", dataset=ds)


def test_hf_text_and_squad_rows():
    text = datasets.Dataset.from_dict({"text": ["Uma frase  aqui", "", "outra"]})
    assert [s.words for s in hub_datasets.load_hf_text("wiki", "train", dataset=text)] == [("Uma", "frase", "aqui"), ("outra",)]
    squad = datasets.Dataset.from_dict(
        {
            "id": ["a", "b"],
            "title": ["T", "T"],
            "context": ["Lisboa fica em Portugal.", "Lisboa fica em Portugal."],
            "question": ["Onde?", "Quando?"],
            "answers": [{"text": ["Portugal"], "answer_start": [15]}, {"text": [], "answer_start": []}],
        }
    )
    examples = hub_datasets.load_hf_squad("squad_v2", "validation", dataset=squad)
    assert [e.answers for e in examples] == [(Answer("Portugal", 15),), ()]
    bad = squad.map(lambda row: {"answers": {"text": ["Portugal"], "answer_start": [14]}})
    with pytest.raises(AladError, match=r"question 'a': answer 'Portugal' is not at answer_start=14"):
        hub_datasets.load_hf_squad("squad_v2", "validation", dataset=bad)


def test_tfds_missing_package_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import now raises ImportError
    with pytest.raises(AladError, match=r"pip install alad-jax\[tfds\]"):
        read_dataset("tfds", "conll2003", split="train")


def test_tfds_rows_are_decoded_with_label_names(monkeypatch):
    label = types.SimpleNamespace(names=["O", "B-LOC"])
    info = types.SimpleNamespace(features={"tokens": None, "ner": types.SimpleNamespace(feature=label)})
    rows = [{"tokens": [b"S\xc3\xa3o", b"Paulo"], "ner": [1, 0]}]
    fake = types.SimpleNamespace(load=lambda name, **kw: (rows, info), as_numpy=lambda ds: ds)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    sentences = read_dataset("tfds", "conll2003", split="train")
    assert [(s.words, s.tags) for s in sentences] == [(("São", "Paulo"), ("B-LOC", "O"))]
