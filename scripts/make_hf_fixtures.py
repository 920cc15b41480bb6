"""Writes tests/fixtures/hf_tiny/: tiny random BERT and DistilBERT saved by transformers, and their outputs.

For each family, a small random model (transformers' own BertModel /
DistilBertModel, float32, eval mode) is saved with ``save_pretrained``
(``config.json`` + ``model.safetensors``, transformers' parameter names), and
run on one padded batch; ``reference.npz`` stores the inputs and every hidden
state (embeddings output, then each layer). The BERT batch uses segment ids 0
and 1, so a model that ignored ``token_type_ids`` would not reproduce it.
Needs torch (only this script does; the tests read the files without it).

    python scripts/make_hf_fixtures.py [--out tests/fixtures/hf_tiny]
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
import torch
import transformers

# Small enough to check in (~25 KB of weights each), big enough for 2 heads and 2 layers.
SIZES = dict(vocab_size=48, hidden=16, layers=2, heads=2, intermediate=24, positions=16)
LENGTHS = (10, 7, 4)  # one full row and two padded ones
# BERT pairs: [CLS] A [SEP] B [SEP] -> segment 0 up to the first [SEP], segment 1 after it.
FIRST_SEGMENT = (4, 3, 2)


def _model(kind: str) -> torch.nn.Module:
    s = SIZES
    if kind == "bert":
        config = transformers.BertConfig(
            vocab_size=s["vocab_size"], hidden_size=s["hidden"], num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"], intermediate_size=s["intermediate"],
            max_position_embeddings=s["positions"], type_vocab_size=2,
        )
        model = transformers.BertModel(config)
    else:
        config = transformers.DistilBertConfig(
            vocab_size=s["vocab_size"], dim=s["hidden"], n_layers=s["layers"], n_heads=s["heads"],
            hidden_dim=s["intermediate"], max_position_embeddings=s["positions"],
        )
        model = transformers.DistilBertModel(config)
    # transformers' init (std 0.02, LayerNorm at 1/0) gives near-uniform attention, where swapping the
    # query and key projections barely shows; larger values make every tensor matter.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                param.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(param))
            else:
                param.copy_(0.4 * torch.randn_like(param))
    return model.eval()


def _batch(kind: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    rows, width = len(LENGTHS), max(LENGTHS)
    positions = np.arange(width)[None, :]
    lengths = np.array(LENGTHS)[:, None]
    mask = (positions < lengths).astype(np.int64)
    ids = np.where(mask, rng.integers(4, SIZES["vocab_size"], size=(rows, width)), 0)
    ids[:, 0] = 2  # [CLS]-like first token, [SEP]-like last real token
    ids[np.arange(rows), np.array(LENGTHS) - 1] = 3
    types = ((positions >= np.array(FIRST_SEGMENT)[:, None]) & (mask == 1)).astype(np.int64)
    batch = {"input_ids": ids, "attention_mask": mask}
    if kind == "bert":
        batch["token_type_ids"] = types
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "hf_tiny"
    parser.add_argument("--out", type=pathlib.Path, default=default_out)
    args = parser.parse_args()

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    arrays = {"versions": np.array([f"transformers {transformers.__version__}", f"torch {torch.__version__}"])}
    for kind in ("bert", "distilbert"):
        model = _model(kind)
        model.save_pretrained(args.out / kind)  # safetensors, transformers' names
        batch = _batch(kind, rng)
        with torch.no_grad():
            hidden = model(**{k: torch.tensor(v) for k, v in batch.items()}, output_hidden_states=True).hidden_states
        for key, value in batch.items():
            arrays[f"{kind}/{key}"] = value.astype(np.int32)
        # [layers + 1, batch, seq, hidden]: embeddings output, then each layer; padding positions included.
        arrays[f"{kind}/hidden_states"] = torch.stack(hidden).numpy().astype(np.float32)
    np.savez_compressed(args.out / "reference.npz", **arrays)
    sizes = {p.relative_to(args.out).as_posix(): p.stat().st_size for p in sorted(args.out.rglob("*")) if p.is_file()}
    print(f"wrote {args.out}: {sizes}")


if __name__ == "__main__":
    main()
