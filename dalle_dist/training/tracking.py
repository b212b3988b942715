"""Where a run's numbers and pictures go: the terminal (a tqdm bar on a TTY, plain lines otherwise),
``metrics.jsonl`` (always, written by the loop), and the trackers asked for with ``--tracker``: Weights &
Biases (offline when no API key is configured) and TensorBoard. Only the root rank tracks."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Protocol

from ..errors import UserError

TRACKERS = ("wandb", "tensorboard", "none")


def add_tracking_flags(parser: argparse.ArgumentParser, script: str) -> None:
    """DALLE-pytorch's wandb flags plus ``--tracker``."""
    g = parser.add_argument_group("tracking")
    g.add_argument(
        "--tracker",
        type=tracker_list,
        default=["none"],
        help="where metrics and sample images go besides metrics.jsonl: wandb, tensorboard or none "
        "(comma-separated for several); wandb runs offline when no API key is configured",
    )
    g.add_argument("--wandb_name", default=f"dalle_dist_{script}", help="wandb project name")
    g.add_argument("--wandb_entity", default=None, help="wandb team or user (default: your own)")
    g.add_argument(
        "--progress",
        choices=("auto", "bar", "lines"),
        default="auto",
        help="a tqdm bar (auto: when stdout is a terminal) or plain log lines (cluster logs, CI)",
    )


def tracker_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown tracker {', '.join(unknown) or text!r}: choose from "
                                         f"{', '.join(TRACKERS)}")  # fmt: skip
    return names


class Tracker(Protocol):
    def metrics(self, record: dict[str, Any], step: int) -> None: ...

    def image(self, name: str, path: Path, step: int, caption: str) -> None: ...

    def close(self) -> None: ...


class WandbTracker:
    """A wandb run in the run directory; offline (``wandb sync`` later) when no API key is configured."""

    def __init__(self, run_dir: Path, project: str, entity: str | None, config: dict[str, Any], log) -> None:
        try:
            import wandb
        except ImportError:
            raise UserError("--tracker wandb needs wandb: pip install wandb (or make install-dev)") from None
        self.wandb = wandb
        mode = os.environ.get("WANDB_MODE")
        if mode is None and not _wandb_key_configured():
            mode = "offline"
        self.run = wandb.init(
            project=project,
            entity=entity,
            name=run_dir.name,
            dir=str(run_dir),
            config=config,
            mode=mode,
            resume="allow",
            id=_run_id(run_dir),
        )
        if mode == "offline":
            log(
                f"wandb: no API key configured: logging offline to {self.run.dir}; upload later with "
                f"`wandb sync {Path(self.run.dir).parent}`"
            )

    def metrics(self, record: dict[str, Any], step: int) -> None:
        self.run.log({k: v for k, v in record.items() if k != "step"}, step=step)

    def image(self, name: str, path: Path, step: int, caption: str) -> None:
        self.run.log({name: self.wandb.Image(str(path), caption=caption)}, step=step)

    def close(self) -> None:
        self.run.finish()


class TensorBoardTracker:
    """Scalars and images in ``RUN_DIR/tensorboard`` (``tensorboard --logdir RUN_DIR``)."""

    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(
                "--tracker tensorboard needs tensorboard: pip install tensorboard (or make install-dev)"
            ) from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def metrics(self, record: dict[str, Any], step: int) -> None:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def image(self, name: str, path: Path, step: int, caption: str) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"))
        self.writer.add_image(name, pixels, step, dataformats="HWC")
        if caption:
            self.writer.add_text(f"{name}/caption", caption, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Tracking:
    """The terminal plus every tracker of a run; a silent stand-in on ranks other than the root."""

    def __init__(self, trackers: list[Tracker], progress: bool) -> None:
        self.trackers = trackers
        self.progress = progress
        self.bar = None

    def start(self, step: int, total_steps: int) -> None:
        """Open the progress bar (when asked for) at ``step`` of ``total_steps``."""
        if self.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, file=sys.stdout)

    def log(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def advance(self) -> None:
        """One optimizer step done."""
        if self.bar is not None:
            self.bar.update(1)

    def postfix(self, values: dict[str, float]) -> None:
        """The latest figures shown after the bar."""
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in values.items()}, refresh=False)

    def metrics(self, record: dict[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.metrics(record, int(record["step"]))

    def image(self, name: str, path: Path, step: int, caption: str = "") -> None:
        for tracker in self.trackers:
            tracker.image(name, path, step, caption)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        for tracker in self.trackers:
            tracker.close()


def start_tracking(
    args: argparse.Namespace, run_dir: Path, is_root: bool, config: dict[str, Any]
) -> Tracking:
    """The trackers ``args`` ask for (root rank only; other ranks stay quiet); ``config`` is the run's
    resolved flags, recorded by the trackers that keep one."""
    if not is_root:
        return Tracking([], progress=False)
    progress = args.progress == "bar" or (args.progress == "auto" and sys.stdout.isatty())
    tracking = Tracking([], progress=progress)
    names = [n for n in dict.fromkeys(args.tracker) if n != "none"]
    for name in names:
        if name == "wandb":
            tracking.trackers.append(
                WandbTracker(run_dir, args.wandb_name, args.wandb_entity, config, tracking.log)
            )
        else:
            tracking.trackers.append(TensorBoardTracker(run_dir))
    return tracking


def _wandb_key_configured() -> bool:
    """Whether wandb could log in without asking: an API key in the environment or in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def _run_id(run_dir: Path) -> str:
    """A wandb run id stable for a run directory, so ``--resume`` continues the same wandb run."""
    file = run_dir / "wandb_run_id.txt"
    if file.is_file():
        return file.read_text(encoding="utf-8").strip()
    import secrets

    run_id = secrets.token_hex(4)
    file.write_text(run_id + "\n", encoding="utf-8")
    return run_id
