"""``alad bench --vs-torch``: the authors' recipe in PyTorch, timed on the same batches as ours.

Imported only when ``--vs-torch`` is given (torch is an optional extra).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from alad_jax.config import Config
from alad_jax.errors import AladError
from alad_train.bench import LATENCY_BATCHES, SEQ, Effort, _one_per_shape, _percentiles, _seconds


def require_torch() -> None:
    if importlib.util.find_spec("torch") is None:
        raise AladError("alad bench --vs-torch needs PyTorch, which is not installed; install it with "
                        "`bash scripts/setup.sh torch` (or drop --vs-torch)")


def torch_recipe(cfg: Config, teacher_dir: Path, student_dir: Path, batches: list[dict], num_labels: int,
                  effort: Effort) -> dict:
    """The authors' recipe: frozen BertModel teacher and student, nn.Linear adapter, AdamW, no cache."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(cfg.seed)
    teacher = transformers.BertModel.from_pretrained(str(teacher_dir)).eval()
    student = transformers.BertModel.from_pretrained(str(student_dir)).eval()
    ds, dt, window = student.config.hidden_size, teacher.config.hidden_size, cfg.windows[0]

    class Adapter(torch.nn.Module):
        """Windows padded at the batch edges only, as in the reference code."""

        def __init__(self, k: int):
            super().__init__()
            self.k = k
            self.fc1 = torch.nn.Linear(k * ds, cfg.adapter_hidden)
            self.fc2 = torch.nn.Linear(cfg.adapter_hidden, dt)

        def forward(self, hidden):
            r, length = self.k // 2, hidden.shape[1]
            padded = torch.nn.functional.pad(hidden, (0, 0, r, r))
            windows = torch.cat([padded[:, j : j + length] for j in range(self.k)], dim=-1)
            return self.fc2(torch.nn.functional.gelu(self.fc1(windows)))

    adapter = Adapter(window)
    stage, optim = cfg.stages.continual, cfg.optim
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=stage.lr, betas=(optim.b1, optim.b2), eps=optim.eps,
                                  weight_decay=stage.weight_decay)

    def step(batch):
        ids = torch.from_numpy(batch["input_ids"]).long()
        mask = torch.from_numpy(batch["attention_mask"]).long()
        with torch.no_grad():
            s = student(input_ids=ids, attention_mask=mask).last_hidden_state
            t = teacher(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        loss = (((adapter(s) - t) ** 2) * m).sum() / m.sum()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(adapter.parameters(), optim.clip_norm)
        optimizer.step()

    timed = batches[: effort.torch_batches] if effort.torch_batches else batches
    for batch in _one_per_shape(timed):
        step(batch)  # warm-up: allocator and kernel selection, like our compilation
    seconds = _seconds(lambda: [step(b) for b in timed])
    tokens = int(sum(b["attention_mask"].sum() for b in timed))

    head = torch.nn.Linear(dt, num_labels)
    latency = {}
    with torch.inference_mode():
        for rows in LATENCY_BATCHES:
            ids = torch.from_numpy(np.random.default_rng(rows).integers(1000, student.config.vocab_size, (rows, SEQ)))
            mask = torch.ones_like(ids)
            run = lambda: head(adapter(student(input_ids=ids, attention_mask=mask).last_hidden_state)).argmax(-1)
            run()
            latency[f"b{rows}"] = _percentiles([_seconds(run) for _ in range(effort.latency_reps[rows])])
    return {"batches": len(timed), "tokens": tokens, "seconds": seconds, "latency": latency,
            "threads": torch.get_num_threads(), "version": torch.__version__}
