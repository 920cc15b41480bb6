"""Which PyTorch alignment baseline is slow, and why: variants of the uncached step, interleaved.

Issue 14: ``alad bench --vs-torch`` put our uncached alignment at 1.07x its
PyTorch recipe while an independent restatement measured 0.83x. This script
times, step by step and interleaved (so other processes' load hits all alike),
the uncached alignment step (frozen student + teacher forwards, AlAd step) of

- ``jax``: ours (alad_train.state train step, compiled per shape);
- ``torch_old``: ``alad bench``'s recipe before the fix (pooler layers kept,
  ``torch.no_grad``, the default for-loop AdamW and clip);
- ``torch_fused``: the same with AdamW's fused CPU kernel;
- ``torch_fast``: fused AdamW, no pooler, ``torch.inference_mode`` for the frozen forwards;
- ``torch_eager``: ``torch_fast`` with eager (non-SDPA) attention;

on two kinds of batches: the stage-2 token-budget batches ``alad bench``
times (padded, many shapes) and dense 32 x 128 batches (the restatement's).
Run: ``python benchmarks/torch_baseline.py [--batches 8] [--reps 3] [--dense-reps 5]``;
``--no-jax`` leaves JAX out of the process entirely (does its presence slow torch?).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def torch_step_factory(teacher_dir, student_dir, cfg, *, pooler: bool, fused: bool, inference: bool, attn: str):
    import torch
    import transformers

    from alad_train.bench.pytorch import reference_adapter, reference_align_loss

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    kw = {"dtype": torch.float32, "attn_implementation": attn}
    if not pooler:
        kw["add_pooling_layer"] = False
    teacher = transformers.BertModel.from_pretrained(str(teacher_dir), **kw).eval()
    student = transformers.BertModel.from_pretrained(str(student_dir), **kw).eval()
    adapter = reference_adapter(cfg.windows[0], student.config.hidden_size, cfg.adapter_hidden,
                                teacher.config.hidden_size)
    stage, optim = cfg.stages.continual, cfg.optim
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=stage.lr, betas=(optim.b1, optim.b2), eps=optim.eps,
                                  weight_decay=stage.weight_decay, **({"fused": True} if fused else {}))
    ctx = torch.inference_mode if inference else torch.no_grad
    tensors = {}

    def step(batch):
        key = id(batch)
        if key not in tensors:  # host -> torch once per batch (ours: numpy in, as in an epoch)
            tensors[key] = (torch.from_numpy(batch["input_ids"]).long(), torch.from_numpy(batch["attention_mask"]).long())
        ids, mask = tensors[key]
        with ctx():
            s = student(input_ids=ids, attention_mask=mask).last_hidden_state
            t = teacher(input_ids=ids, attention_mask=mask).last_hidden_state
        if inference:
            s, t = s.clone(), t.clone()  # inference tensors cannot enter autograd
        loss = reference_align_loss(adapter(s), t, mask.unsqueeze(-1).float())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(adapter.parameters(), optim.clip_norm)
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dense-reps", type=int, default=5)
    parser.add_argument("--dense-batches", type=int, default=2)
    parser.add_argument("--no-jax", action="store_true")
    parser.add_argument("--dense-only", action="store_true", help="skip the stage-2 batches")
    parser.add_argument("--variants", default="torch_old,torch_fused,torch_fast,torch_eager")
    args = parser.parse_args()

    from alad_train.config import load_config
    from alad_train import tasks
    from alad_train.bench import run as bench_run, trainer as bench_trainer

    cfg = load_config(None, [])
    work = Path(tempfile.mkdtemp(prefix="torch-baseline-"))
    teacher, student, tokenizer, teacher_dir, student_dir, _ = bench_run.load_models(cfg, work)
    task = tasks.TaggingTask.load(cfg, tokenizer)
    stage2 = tasks.alignment_batches(task.text_rows("train"), cfg, cfg.stages.continual, epoch=0)[: args.batches]
    rng = np.random.default_rng(0)
    dense = [{"input_ids": rng.integers(1000, teacher.config.vocab_size, (32, 128)).astype(np.int32),
              "attention_mask": np.ones((32, 128), np.int32)} for _ in range(args.dense_batches)]

    options = {
        "torch_old": dict(pooler=True, fused=False, inference=False, attn="sdpa"),
        "torch_fused": dict(pooler=True, fused=True, inference=False, attn="sdpa"),
        "torch_fast": dict(pooler=False, fused=True, inference=True, attn="sdpa"),
        "torch_eager": dict(pooler=False, fused=True, inference=True, attn="eager"),
    }
    steps = {name: torch_step_factory(teacher_dir, student_dir, cfg, **options[name])
             for name in args.variants.split(",")}
    if not args.no_jax:
        from alad_train import cases, models
        from alad_train.loop import make_optimizer

        adapter = bench_trainer.first_window_adapter(cfg, teacher, student, 0)
        trainer = bench_trainer.Trainer(models.AlignModel(student, teacher, adapter), cases.ALIGNMENT_TRAINS,
                                 models.align_loss, make_optimizer(cfg.stages.continual, cfg.optim, 1000))
        import jax

        def jax_step(batch):
            trainer.compile(batch)
            jax.block_until_ready(trainer.step(batch, jax.random.key(0)))

        steps = {"jax": jax_step, **steps}

    report = {"variants": list(steps), "no_jax_in_process": args.no_jax}
    kinds = [("stage2", stage2, args.reps), ("dense_32x128", dense, args.dense_reps)]
    for kind, batches, reps in kinds[1:] if args.dense_only else kinds:
        for batch in batches:  # warm-up: one step per shape per variant (compilation for jax)
            for step in steps.values():
                step(batch)
        seconds = {name: [] for name in steps}
        for _ in range(reps):
            for name, step in steps.items():  # a whole pass per variant, variants alternating pass by pass
                start = time.perf_counter()
                for batch in batches:
                    step(batch)
                seconds[name].append(time.perf_counter() - start)
        real = int(sum(b["attention_mask"].sum() for b in batches))
        padded = int(sum(b["attention_mask"].size for b in batches))
        report[kind] = {
            "batches": len(batches), "real_tokens": real, "padded_tokens": padded,
            "padded_tokens_per_s": {n: {"median": round(padded / statistics.median(s)),
                                        "min": round(padded / max(s)), "max": round(padded / min(s))}
                                    for n, s in seconds.items()},
        }
        if "jax" in seconds:
            report[kind]["jax_over_each_torch"] = {
                n: round(statistics.median(seconds[n]) / statistics.median(seconds["jax"]), 3)
                for n in seconds if n != "jax"}
        print(json.dumps(report[kind]), flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
