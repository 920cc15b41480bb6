"""Writes the MPNet golden fixture: a tiny random MPNetModel and transformers' own outputs on it.

    tests/fixtures/mpnet_tiny/                 config.json + model.safetensors (the random weights)
    tests/fixtures/mpnet_tiny_reference.npz    inputs, every hidden state at the real tokens, bucket table

The model is random but every tensor is perturbed away from its init (LayerNorms
off (1, 0), the relative position bias at unit scale, so a wrong bucket shows),
and the padded batch is long enough (140 tokens) for relative distances past
both the exact range (8) and max_distance (128). Needs torch + transformers
(only this script does; the test reads the files without torch).

    python scripts/make_mpnet_fixture.py [--out tests/fixtures]
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
import torch
import transformers

CONFIG = dict(
    vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
    max_position_embeddings=160, relative_attention_num_buckets=32, layer_norm_eps=1e-5, hidden_act="gelu",
)
PAD = 1  # MPNet's padding index, fixed in transformers
LENGTHS = (140, 70, 12)  # real tokens per row; the batch is padded to the longest
BUCKET_RANGE = 600  # relative positions -600..600 for the bucket table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures"
    parser.add_argument("--out", type=pathlib.Path, default=default_out)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = transformers.MPNetModel(transformers.MPNetConfig(**CONFIG)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            scale = 1.0 if "relative_attention_bias" in name else 0.1
            param.add_(scale * torch.randn_like(param))
    model_dir = args.out / "mpnet_tiny"
    model.save_pretrained(model_dir)

    rng = np.random.default_rng(0)
    width = max(LENGTHS)
    input_ids = np.full((len(LENGTHS), width), PAD, np.int64)
    for row, length in enumerate(LENGTHS):
        body = rng.choice([i for i in range(CONFIG["vocab_size"]) if i not in (0, 1, 2)], size=length - 2)
        input_ids[row, :length] = [0, *body, 2]  # <s> ... </s>, as the tokenizer writes them
    attention_mask = (input_ids != PAD).astype(np.int64)
    with torch.no_grad():
        hidden = model(
            input_ids=torch.tensor(input_ids), attention_mask=torch.tensor(attention_mask), output_hidden_states=True
        ).hidden_states
        relative = torch.arange(-BUCKET_RANGE, BUCKET_RANGE + 1)
        buckets = model.encoder.relative_position_bucket(relative).numpy()

    real = attention_mask.astype(bool)
    np.savez_compressed(
        args.out / "mpnet_tiny_reference.npz",
        input_ids=input_ids.astype(np.int32),
        attention_mask=attention_mask.astype(np.int32),
        # [num_layers + 1, num_real_tokens, hidden]: each hidden state at the real tokens, row-major order.
        hidden_states=np.stack([h.numpy()[real] for h in hidden]).astype(np.float32),
        relative_positions=relative.numpy().astype(np.int32),
        buckets=buckets.astype(np.int8),
        versions=np.array([f"transformers {transformers.__version__}", f"torch {torch.__version__}"]),
    )
    sizes = {p.name: p.stat().st_size for p in [*model_dir.iterdir(), args.out / "mpnet_tiny_reference.npz"]}
    print(f"wrote {model_dir} and mpnet_tiny_reference.npz: {sizes}")


if __name__ == "__main__":
    main()
