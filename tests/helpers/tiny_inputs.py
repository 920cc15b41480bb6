"""The inputs of the end-to-end tests' runs: tiny random BERT encoders with the real MiniLM tokenizer, and
small train/dev/test/corpus files cut from the real packaged UD corpora. Used by test files (through
tests/conftest.py) and by the worker scripts they start."""

from __future__ import annotations

from pathlib import Path

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def packaged_blocks(name: str, start: int, stop: int) -> str:
    """Sentences ``start:stop`` of a packaged CoNLL-U corpus, as the text of a CoNLL-U file."""
    from alad_jax.data.packaged import packaged_path

    sentences = [b for b in packaged_path(name).read_text(encoding="utf-8").split("\n\n") if b.strip()]
    return "\n\n".join(sentences[start:stop]) + "\n\n"


def write_encoders(root: Path, sizes: dict[str, tuple[int, int]], *, max_positions: int) -> None:
    """``root/<name>``: a random BERT encoder of (hidden size, layers) per name, 2 heads, with MiniLM's
    tokenizer (so the real sentences tokenize as the real models' would)."""
    from flax import nnx

    from alad_jax.models.config import EncoderConfig
    from alad_jax.models.hub import load_tokenizer, save_encoder
    from alad_jax.models.modeling import build_encoder

    tokenizer = load_tokenizer(MINILM)
    for name, (hidden, layers) in sizes.items():
        config = EncoderConfig(model_type="bert", vocab_size=tokenizer.vocab_size, hidden_size=hidden,
                               num_layers=layers, num_heads=2, intermediate_size=2 * hidden,
                               max_position_embeddings=max_positions)
        save_encoder(build_encoder(config, rngs=nnx.Rngs(1)), root / name, tokenizer=tokenizer)


def write_ud_splits(root: Path, splits: dict[str, tuple[int, int]], corpus: tuple[int, int]) -> None:
    """``root/<split>.conllu`` from UD Portuguese (porttinari) sentences ``a:b`` per split, and
    ``root/corpus.conllu`` (the alignment corpus) from petrogold's sentences ``corpus``."""
    for split, (a, b) in splits.items():
        (root / f"{split}.conllu").write_text(packaged_blocks("porttinari", a, b), encoding="utf-8")
    (root / "corpus.conllu").write_text(packaged_blocks("petrogold", *corpus), encoding="utf-8")
