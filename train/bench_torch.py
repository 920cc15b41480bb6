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


def _bert(path: Path, *, train: bool):
    """transformers' BertModel in float32 (SDPA attention, transformers' default), in train or eval mode."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    model = transformers.BertModel.from_pretrained(str(path), dtype=torch.float32, add_pooling_layer=False)
    return model.train(train)


def _adapter(k: int, ds: int, hidden: int, dt: int):
    """The reference AlAd: windows padded at the batch edges only (as in the authors' code), two Linears."""
    import torch

    class Adapter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.k = k
            self.fc1 = torch.nn.Linear(k * ds, hidden)
            self.fc2 = torch.nn.Linear(hidden, dt)

        def forward(self, states):
            r, length = self.k // 2, states.shape[1]
            padded = torch.nn.functional.pad(states, (0, 0, r, r))
            windows = torch.cat([padded[:, j : j + length] for j in range(self.k)], dim=-1)
            return self.fc2(torch.nn.functional.gelu(self.fc1(windows)))

    return Adapter()


def _optimizer(params, stage, optim):
    """AdamW as the stages configure it; PyTorch's fused CPU kernel (the fastest of its three forms here)."""
    import torch

    return torch.optim.AdamW(list(params), lr=stage.lr, betas=(optim.b1, optim.b2), eps=optim.eps,
                             weight_decay=stage.weight_decay, fused=True)


def _trainer(module, loss_of, stage, optim):
    """A blocking step: forward, loss, backward, global-norm clip, AdamW update."""
    import torch

    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = _optimizer(params, stage, optim)

    def step(*inputs):
        loss = loss_of(*inputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, optim.clip_norm)
        optimizer.step()
        return loss

    return step


def alignment_steps(cfg: Config, teacher_dir: Path, student_dir: Path):
    """``batch -> {"align_uncached", "adapter_cached"}`` blocking PyTorch steps on a dense batch.

    Uncached: frozen teacher and student forwards (no autograd), the AlAd step on
    the student states. Cached: the AlAd step alone on given float32 hidden states.
    """
    import torch

    torch.manual_seed(cfg.seed)
    teacher, student = _bert(teacher_dir, train=False), _bert(student_dir, train=False)
    for p in (*teacher.parameters(), *student.parameters()):
        p.requires_grad_(False)
    ds, dt = student.config.hidden_size, teacher.config.hidden_size
    stage, optim = cfg.stages.continual, cfg.optim

    def masked_mse(pred, target, m):
        return (((pred - target) ** 2) * m).sum() / m.sum()

    def build(batch: dict, hidden: dict) -> dict:
        ids = torch.from_numpy(batch["input_ids"]).long()
        mask = torch.from_numpy(batch["attention_mask"]).long()
        m = mask.unsqueeze(-1).float()
        uncached, cached = _adapter(cfg.windows[0], ds, cfg.adapter_hidden, dt), _adapter(cfg.windows[0], ds,
                                                                                         cfg.adapter_hidden, dt)

        def uncached_loss():
            with torch.no_grad():
                s = student(input_ids=ids, attention_mask=mask).last_hidden_state
                t = teacher(input_ids=ids, attention_mask=mask).last_hidden_state
            return masked_mse(uncached(s), t, m)

        s_cached = torch.from_numpy(np.asarray(hidden["student_hidden"], np.float32))
        t_cached = torch.from_numpy(np.asarray(hidden["teacher_hidden"], np.float32))
        return {"align_uncached": _trainer(uncached, uncached_loss, stage, optim),
                "adapter_cached": _trainer(cached, lambda: masked_mse(cached(s_cached), t_cached, m), stage, optim)}

    return build


def finetune_steps(cfg: Config, teacher_dir: Path, student_dir: Path, num_labels: int):
    """``batch -> {case name: blocking step}``: BertModel + dropout + Linear head (+ AlAd for joint), all training."""
    import torch
    import transformers

    from alad_train import cases

    torch.manual_seed(cfg.seed)
    teacher_dim = transformers.BertConfig.from_pretrained(str(teacher_dir)).hidden_size

    def build(batch: dict) -> dict:
        ids = torch.from_numpy(batch["input_ids"]).long()
        mask = torch.from_numpy(batch["attention_mask"]).long()
        labels = torch.from_numpy(batch["labels"]).long().reshape(-1)
        steps = {}
        for case in (cases.TEACHER_FT, cases.STUDENT_FT, cases.JOINT):
            encoder = _bert(teacher_dir if case.encoder == cases.TEACHER else student_dir, train=True)
            ds = encoder.config.hidden_size
            adapter = None
            if case.windowed:
                adapter = _adapter(cfg.windows[0], ds, cfg.adapter_hidden, teacher_dim)
            width = teacher_dim if adapter is not None else ds
            head = torch.nn.Sequential(torch.nn.Dropout(cfg.head_dropout), torch.nn.Linear(width, num_labels))
            parts = torch.nn.ModuleList([m for m in (encoder, adapter, head) if m is not None]).train()

            def loss_of(encoder=encoder, adapter=adapter, head=head):
                hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
                if adapter is not None:
                    hidden = adapter(hidden)
                logits = head(hidden)
                return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels,
                                                         ignore_index=-100)

            steps[case.name] = _trainer(parts, loss_of, getattr(cfg.stages, case.stage), cfg.optim)
        return steps

    return build


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
