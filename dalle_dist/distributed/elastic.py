"""Joining the process group under torchrun so that a restarted job (``--max-restarts``) meets cleanly.

torchrun's c10d rendezvous lends its own TCP store to the workers (``TORCHELASTIC_USE_AGENT_STORE``), and
that store outlives a restart: the keys through which the ranks of the dead attempt exchanged their
addresses are still there when the restarted ranks look for each other, and a rank that reads one before
its peer has rewritten it connects to a dead address (``connection refused``, or a hang) — PyTorch issue
135712. Each attempt therefore meets under its own prefix (``TORCHELASTIC_RESTART_COUNT``). Agents keep
that count per node, so a job whose membership changes after a restart (``--nnodes MIN:MAX``) should
start torchrun with ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``: then every attempt gets a fresh store.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch.distributed as dist


def init_process_group(backend: str, timeout: timedelta | None = None) -> None:
    """``dist.init_process_group`` from the launcher's environment, one store prefix per torchrun attempt."""
    kwargs = {} if timeout is None else {"timeout": timeout}
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        dist.init_process_group(backend=backend, **kwargs)
        return
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,  # the agent hosts it
        timeout=timeout or timedelta(minutes=30),
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group(
        backend=backend,
        store=dist.PrefixStore(f"dalle_dist/attempt-{attempt}", store),
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        **kwargs,
    )
