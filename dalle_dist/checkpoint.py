"""Self-describing, atomically written checkpoints, the run directory that holds them, and the loaders
that rebuild a trained model from one (``load_vae``, ``load_dalle``, ``load_clip``, and DALL-E 2's
``load_prior``, ``load_decoder``, and the latent decoder's ``load_autoencoder``).

Everything that reads or writes a checkpoint (the trainers, generation, evaluation, conversion, the token
cache) goes through this module. A checkpoint is a folder:

    meta.json              format + version, kind ("vae" | "dalle" | "clip" | "prior" | "decoder" |
                           "autoencoder"), model config (a prior's or decoder's CLIP config under
                           "clip", a latent decoder's autoencoder config under "autoencoder"), VAE
                           description, data description, step, a SHA-256 of every other file, and
                           one of its own content (``meta_sha256``): an edited description is caught
                           as surely as damaged weights
    model.safetensors      weights (a DALL-E checkpoint embeds its VAE's weights under ``vae.``)
    tokenizer.json         DALL-E and CLIP: the tokenizer, as data
    training_state.pt      optimizer, scheduler, step, RNG and data position; read with weights_only=True
    engine/                an engine's own files when it keeps state outside torch (DeepSpeed's ZeRO
                           partitions, for resuming); every rank writes its part

It is written to a temporary folder, fsynced and renamed into place, so a crash leaves either the old
checkpoint or the new one, never half of one. A run directory holds ``config.yaml``, ``checkpoints/``,
``latest`` (the name of the newest complete checkpoint), ``final/`` and ``samples/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import UserError
from .files import fsync_path, sha256
from .lock import RunLock, hold, release
from .models import CLIP, DALLE, DALLEConfig, DiscreteVAE
from .models.dalle import register_checkpoint_reader
from .models.pretrained import PRETRAINED_VAES, pretrained_vae_from_config
from .models.vqgan import VQGAN
from .safe_load import NotTorchFileError, UnsafeFileError, load_plain
from .text import Tokenizer, load_tokenizer

FORMAT = "dalle_dist"
FORMAT_VERSION = 1
ENGINE_FOLDER = "engine"
VAE_CLASSES: dict[str, type[nn.Module]] = {"discrete": DiscreteVAE, "vqgan": VQGAN}


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


def describe_vae(vae: nn.Module) -> dict[str, Any]:
    """How to rebuild ``vae``: its kind and constructor config (a pretrained one: its files' paths and
    hashes and its architecture; its weights travel in the DALL-E checkpoint)."""
    if isinstance(vae, tuple(PRETRAINED_VAES.values())):
        return {"kind": "pretrained", "config": vae.config()}
    for kind, cls in VAE_CLASSES.items():
        if isinstance(vae, cls):
            return {"kind": kind, "config": vae.config()}
    raise TypeError(f"cannot describe a VAE of type {type(vae).__name__} in a checkpoint")


def staging_folder(folder: Path) -> Path:
    """Where ``folder`` is assembled before it is renamed into place (the same path on every rank)."""
    return folder.with_name(f".tmp-{folder.name}")


def _write_error(folder: Path, error: Exception) -> UserError:
    why = getattr(error, "strerror", None) or str(error)
    return UserError(
        f"could not write checkpoint {folder}: {why}: nothing was replaced; free disk "
        "space (or fix permissions) and rerun with --resume"
    )


def start_staging(folder: Path) -> Path:
    """An empty staging folder for ``folder`` (left-overs of a crashed write are removed)."""
    tmp = staging_folder(folder)
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    except OSError as e:
        raise _write_error(folder, e) from None
    return tmp


def meta_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint description (every key but the digest itself), as ``meta_sha256`` holds
    it: the model config a loader builds from is verified like the weights it loads into it."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def save_checkpoint(
    folder: Path,
    *,
    kind: str,
    meta: dict[str, Any],
    module: nn.Module | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    tokenizer: Tokenizer | None = None,
    training_state: dict[str, Any] | None = None,
    extra_weights: dict[str, dict[str, torch.Tensor]] | None = None,
    staged: bool = False,
    before_commit: Callable[[], None] | None = None,
) -> Path:
    """Write a checkpoint folder atomically (replacing an existing one) and return its path.

    The weights are ``weights`` or ``module``'s; ``extra_weights`` are more safetensors files by name (an
    average of the weights: ``ema.safetensors``). With ``staged``, ``staging_folder(folder)`` already holds
    files other ranks wrote (an engine's own checkpoint) and they become part of the checkpoint.
    ``before_commit`` runs when every file is written and synced, just before the rename (fault injection).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_folder(folder) if staged else start_staging(folder)
    try:
        if weights is None:
            weights = module.state_dict()
        weights = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
        save_file(weights, tmp / "model.safetensors")
        for name, tensors in (extra_weights or {}).items():
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp / name)
        if tokenizer is not None:
            tokenizer.save(tmp / "tokenizer.json")
        if training_state is not None:
            torch.save(training_state, tmp / "training_state.pt")
        files = _files(tmp)
        full_meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": kind,
            **meta,
            "checksums": {p.relative_to(tmp).as_posix(): sha256(p) for p in files},
        }
        full_meta["meta_sha256"] = meta_digest(full_meta)
        (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2, sort_keys=True), encoding="utf-8")
        for p in [*_files(tmp), *sorted(d for d in tmp.rglob("*") if d.is_dir()), tmp]:
            fsync_path(p)
    # a failed write surfaces as OSError, or as safetensors' / torch.save's own error types wrapping it
    except (OSError, SafetensorError, RuntimeError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(folder, e) from None
    if before_commit is not None:
        before_commit()
    old = None
    if folder.exists():
        old = folder.with_name(f".old-{folder.name}-{os.getpid()}")
        os.replace(folder, old)
    os.replace(tmp, folder)
    fsync_path(folder.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint folder or a run directory (its ``final/``, else ``latest``)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist: pass a run directory or a checkpoint folder")
    if (path / "meta.json").is_file():
        return path
    if (path / "final" / "meta.json").is_file():
        return path / "final"
    latest = path / "latest"
    if latest.is_file():
        target = path / "checkpoints" / latest.read_text(encoding="utf-8").strip()
        if (target / "meta.json").is_file():
            return target
        raise UserError(f"{latest} names {target}, which is not a complete checkpoint: the run is damaged")
    if path.suffix in (".pt", ".pth", ".ckpt", ".bin"):
        raise UserError(
            f"{path} is a single file, not a dalle_dist checkpoint folder: pass the run directory or one of "
            "its checkpoints/step-* folders (a DALLE-pytorch .pt file: import it with "
            "python -m dalle_dist.convert PATH --output DIR)"
        )
    raise UserError(
        f"{path} is neither a run directory nor a checkpoint folder (no meta.json, final/ or latest)"
    )


def resolve_latest(run_dir: str | Path) -> Path:
    """The newest complete checkpoint of a run directory, for ``--resume``."""
    latest = RunDirectory(run_dir).latest()
    if latest is None:
        raise UserError(
            f"--resume: {run_dir} has no checkpoint to resume from (no complete 'latest'): "
            "drop --resume to start a new run"
        )
    return latest


@dataclass
class Checkpoint:
    """A verified checkpoint folder."""

    path: Path
    meta: dict[str, Any] = field(repr=False)

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))

    def weights(self, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
        file = self.path / name
        try:
            return load_file(file)
        except SafetensorError as e:  # safetensors reads a header and raw bytes: nothing in it can run
            raise UserError(
                f"{file} is not a valid safetensors file ({e}): the checkpoint is damaged"
            ) from None

    def tokenizer(self) -> Tokenizer | None:
        file = self.path / "tokenizer.json"
        if not file.exists():
            return None
        try:
            return load_tokenizer(file)
        except ImportError as e:  # a family whose package this machine lacks (e.g. youtokentome)
            raise UserError(f"{file}: {e}") from None
        except ValueError as e:
            raise UserError(f"{file} is damaged: {e}") from None

    def training_state(self) -> dict[str, Any]:
        file = self.path / "training_state.pt"
        if not file.exists():
            raise UserError(
                f"{self.path} holds no training state (it is an export): it cannot be resumed from"
            )
        try:
            return load_plain(file)
        except UnsafeFileError as e:  # a crafted file stops here, with nothing in it run
            raise UserError(
                f"refused to load {file}: it holds more than tensors and plain data ({e})"
            ) from None
        except NotTorchFileError as e:
            raise UserError(f"{file} is damaged ({e}): resume from another checkpoint") from None


KIND_NAMES = {  # each kind as messages name it
    "vae": "VAE",
    "dalle": "DALL-E",
    "clip": "CLIP",
    "prior": "prior",
    "decoder": "decoder",
    "autoencoder": "autoencoder",
}
_WRITER = {
    "vae": "train_vae.py",
    "dalle": "train_dalle.py",
    "clip": "train_clip.py",
    "prior": "train_prior.py",
    "decoder": "train_decoder.py",
    "autoencoder": "train_autoencoder.py",
}
_FLAG_OF = {
    "vae": "--vae_path",
    "dalle": "--dalle_path",
    "clip": "--clip_path",
    "prior": "--prior_path",
    "decoder": "--decoder_path",
    "autoencoder": "--autoencoder_path",
}


def with_article(name: str) -> str:
    """``a CLIP``, ``an autoencoder``: a kind's name in a sentence."""
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def load_checkpoint(path: str | Path, kind: str | None = None, verify: bool = True) -> Checkpoint:
    """Open and verify a checkpoint; ``kind`` ("vae" | "dalle" | "clip") is what the caller needs."""
    folder = resolve_checkpoint(path)
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{folder / 'meta.json'} is unreadable ({e}): the checkpoint is damaged") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{folder} is not a dalle_dist checkpoint (meta.json has no format {FORMAT!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(
            f"{folder} has checkpoint format version {version}, this dalle_dist reads version "
            f"{FORMAT_VERSION}: use the dalle_dist release that wrote it"
        )
    if kind is not None and meta.get("kind") != kind:
        flag = _FLAG_OF.get(kind, kind)
        found = meta.get("kind")
        hint = f": point {flag} at a {_WRITER.get(kind, kind)} run"
        if found in _FLAG_OF:
            hint += f" (this one goes to {_FLAG_OF[found]})"
        have, need = KIND_NAMES.get(found, found), KIND_NAMES.get(kind, kind)
        raise UserError(
            f"{folder} is {with_article(have)} checkpoint, but {flag} needs {with_article(need)} one{hint}"
        )
    if verify:
        # checkpoints written before the description had its digest have no meta_sha256
        if "meta_sha256" in meta and meta_digest(meta) != meta["meta_sha256"]:
            raise UserError(
                f"{folder / 'meta.json'} does not match its checksum: the checkpoint is damaged or was "
                "edited (its description no longer matches its weights); use another one, or a copy"
            )
        for name, digest in meta.get("checksums", {}).items():
            file = folder / name
            if not file.is_file() or sha256(file) != digest:
                raise UserError(
                    f"{file} is missing or does not match its checksum: the checkpoint is damaged; use "
                    "another one (a run keeps earlier ones in its checkpoints/ folder)"
                )
    return Checkpoint(folder, meta)


def build_vae(description: dict[str, Any]) -> nn.Module:
    """A VAE (untrained) from the description ``describe_vae`` wrote."""
    kind = description.get("kind")
    if kind == "pretrained":
        try:
            return pretrained_vae_from_config(description["config"])
        except (KeyError, ValueError) as e:
            raise UserError(f"the checkpoint's pretrained VAE description is damaged: {e}") from None
    if kind not in VAE_CLASSES:
        raise UserError(f"unknown VAE kind {kind!r} in checkpoint (known: {', '.join(VAE_CLASSES)})")
    config = dict(description["config"])
    if config.get("quantizer") == "fsq" and "fsq_symmetric" not in config:
        # written before FSQ had these options (their defaults now differ): it was trained as plain FSQ
        config |= {"fsq_symmetric": False, "fsq_noise_dropout": 0.0}
    if config.get("quantizer") == "fsq" and "fsq_entropy_weight" not in config:
        config["fsq_entropy_weight"] = 0.0  # written before FSQ's entropy term: trained without it
    if config.get("quantizer") == "lfq" and "lfq_temperature" not in config:
        config["lfq_temperature"] = 0.01  # written before the option: trained at the library's default
    with _described("VAE"):
        return VAE_CLASSES[kind](**config)


@contextlib.contextmanager
def _described(what: str, where: Path | None = None) -> Iterator[None]:
    """Building a model from a description that cannot be built is a damaged checkpoint, in one line."""
    try:
        yield
    except (KeyError, TypeError, ValueError) as e:
        place = f"{where}/meta.json" if where else "the checkpoint's meta.json"
        raise UserError(
            f"{place} does not describe a {what} that can be built ({e}): the checkpoint is damaged or "
            "was edited; use another one"
        ) from None


def load_weights(
    module: nn.Module, weights: dict[str, torch.Tensor], where: Path, cause: str | None = None
) -> None:
    """Load ``weights`` into the model ``where``'s meta.json described; any disagreement (names or shapes)
    is one line: the description and the weights were not written together (or ``cause``, where the
    caller knows better)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [
        f"{name} {tuple(weights[name].shape)} vs {tuple(expected[name].shape)}"
        for name in expected
        if name in weights and weights[name].shape != expected[name].shape
    ]
    if missing or unexpected or wrong:
        found = [f"missing {missing[:3]}"] if missing else []
        found += [f"unexpected {unexpected[:3]}"] if unexpected else []
        found += [f"shapes {', '.join(wrong[:2])} (stored vs described)"] if wrong else []
        raise UserError(
            f"{where}: weights do not fit the model its meta.json describes ({'; '.join(found)}): "
            + (cause or "the checkpoint is damaged or was edited; use another one")
        )
    module.load_state_dict(weights, strict=True)


def load_vae(path: str | Path) -> tuple[nn.Module, Checkpoint]:
    """The trained VAE of a VAE checkpoint (or run directory)."""
    ckpt = load_checkpoint(path, kind="vae")
    vae = build_vae(ckpt.meta["vae"])
    load_weights(vae, ckpt.weights(), ckpt.path)
    return vae, ckpt


def load_dalle(path: str | Path) -> tuple[DALLE, Tokenizer, Checkpoint]:
    """The trained DALLE (with its VAE) and tokenizer of a DALL-E checkpoint (or run directory)."""
    ckpt = load_checkpoint(path, kind="dalle")
    vae = build_vae(ckpt.meta["vae"])
    with _described("DALL-E", ckpt.path):
        dalle = DALLE(DALLEConfig.from_dict(ckpt.meta["model"]), vae=vae)
    load_weights(dalle, ckpt.weights(), ckpt.path)
    dalle.tokenizer = _tokenizer_of(ckpt)
    return dalle, dalle.tokenizer, ckpt


register_checkpoint_reader(lambda path: load_dalle(path)[0])  # DALLE.from_pretrained


def load_clip(path: str | Path) -> tuple[CLIP, Tokenizer, Checkpoint]:
    """The trained CLIP and tokenizer of a ``train_clip.py`` checkpoint or run directory."""
    ckpt = load_checkpoint(path, kind="clip")
    with _described("CLIP", ckpt.path):
        clip = CLIP(**ckpt.meta["model"])
    load_weights(clip, ckpt.weights(), ckpt.path)
    clip.tokenizer = _tokenizer_of(ckpt)  # so that DALLE2(clip, ...) takes captions as strings
    return clip, clip.tokenizer, ckpt


def load_autoencoder(path: str | Path) -> tuple[nn.Module, Checkpoint]:
    """The trained Autoencoder (latent normalisation included) of a ``train_autoencoder.py`` checkpoint."""
    from .models.autoencoder import Autoencoder  # diffusers: only when one is loaded

    ckpt = load_checkpoint(path, kind="autoencoder")
    with _described("autoencoder", ckpt.path):
        model = Autoencoder(**ckpt.meta["model"])
    load_weights(model, ckpt.weights(), ckpt.path)
    return model, ckpt


def load_prior(path: str | Path, ema: bool = True) -> tuple[nn.Module, Tokenizer, Checkpoint]:
    """The trained DiffusionPrior (with the frozen CLIP it carries) and tokenizer of a prior checkpoint;
    with ``ema`` its averaged weights (``ema.safetensors``) where the run kept them: what samples best."""
    from .models.prior import DiffusionPrior  # DALL-E 2 imports diffusers: only when one is loaded

    return _load_on_clip(path, "prior", DiffusionPrior, ema)


def load_decoder(path: str | Path, ema: bool = True) -> tuple[nn.Module, Tokenizer, Checkpoint]:
    """The trained Decoder (with the frozen CLIP it carries) and tokenizer of a decoder checkpoint; with
    ``ema`` its averaged weights where the run kept them."""
    from .models.autoencoder import Autoencoder
    from .models.decoder import Decoder

    def carried(meta: dict[str, Any]) -> dict[str, Any]:  # a latent decoder carries its autoencoder
        return {"autoencoder": Autoencoder(**meta["autoencoder"])} if "autoencoder" in meta else {}

    return _load_on_clip(path, "decoder", Decoder, ema, carried)


def _load_on_clip(
    path: str | Path,
    kind: str,
    cls: type[nn.Module],
    ema: bool,
    carried: Callable[[dict[str, Any]], dict[str, Any]] = lambda meta: {},
) -> tuple[nn.Module, Tokenizer, Checkpoint]:
    """A DALL-E 2 part: its CLIP from ``meta["clip"]`` (and the other models it ``carried``, built from
    the meta), itself from ``meta["model"]``, then the weights (the averaged ones over the raw where asked
    and present)."""
    ckpt = load_checkpoint(path, kind=kind)
    legacy = getattr(cls, "LEGACY_DEFAULTS", {})  # arguments newer than the checkpoint, as it was trained
    with _described(KIND_NAMES[kind], ckpt.path):
        model = cls(CLIP(**ckpt.meta["clip"]), **carried(ckpt.meta), **{**legacy, **ckpt.meta["model"]})
    weights = ckpt.weights()
    if ema and (ckpt.path / "ema.safetensors").is_file():
        weights.update(ckpt.weights("ema.safetensors"))
    # arguments the part has gained since the checkpoint was written, which may have changed its layout
    # (the decoder's norm_groups came with AdaGN): then the weights are old, not damaged
    newer = sorted(set(model.config()) - set(ckpt.meta["model"]) - set(legacy))
    cause = (
        f"it was saved by an earlier dalle_dist, whose {kind} had no {', '.join(newer)} and another layout; "
        f"train it again with train_{kind}.py"
        if newer
        else None
    )
    load_weights(model, weights, ckpt.path, cause)
    model.clip.tokenizer = model.tokenizer = _tokenizer_of(ckpt)
    return model, model.tokenizer, ckpt


def _tokenizer_of(ckpt: Checkpoint) -> Tokenizer:
    tokenizer = ckpt.tokenizer()
    if tokenizer is None:
        raise UserError(f"{ckpt.path} has no tokenizer.json: the checkpoint is damaged")
    return tokenizer


class RunDirectory:
    """``--output``: config, checkpoints, ``latest``, ``final/`` and samples of one run, and the ``lock``
    that keeps a second process from writing into it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.samples = self.root / "samples"
        self.final = self.root / "final"

    def lock(self) -> RunLock:
        """Hold the run directory (created if new) for this process; one line if another process does."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            return hold(self.root / "lock")
        except OSError as e:
            raise UserError(f"cannot write to --output {self.root}: {e.strerror or e}") from None

    def unlock(self) -> None:
        release(self.root / "lock")

    def holds_a_run(self) -> bool:
        return any((self.root / name).exists() for name in ("config.yaml", "checkpoints", "latest", "final"))

    def prepare(self, resume: bool, start_over_unsaved: bool = False) -> None:
        """Create the layout; refuse to mix a new run into an old one, except (``start_over_unsaved``, for
        ``--resume auto``) a run that ended before its first checkpoint: it starts again, its metrics kept
        aside."""
        if start_over_unsaved and not resume and self.latest() is None and self.holds_a_run():
            metrics = self.root / "metrics.jsonl"
            if metrics.is_file():
                metrics.rename(self.root / f"metrics.unsaved-{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
        elif resume:
            if self.latest() is None:
                raise UserError(
                    f"--resume: {self.root} has no checkpoint to resume from (no {self.root / 'latest'}): "
                    "drop --resume to start a new run, or point --output at the run to continue"
                )
        elif self.root.exists() and not self.root.is_dir():
            raise UserError(f"--output {self.root} is a file, not a directory: choose another --output")
        elif self.holds_a_run():
            raise UserError(
                f"--output {self.root} already holds a run: add --resume to continue it, "
                "or choose a new --output"
            )
        try:
            for d in (self.root, self.checkpoints, self.samples):
                d.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise UserError(f"cannot write to --output {self.root}: {e.strerror or e}") from None

    def latest(self) -> Path | None:
        file = self.root / "latest"
        if not file.is_file():
            return None
        target = self.checkpoints / file.read_text(encoding="utf-8").strip()
        return target if (target / "meta.json").is_file() else None

    def step_folder(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:08d}"

    def save_step(self, step: int, keep: int | None = None, **checkpoint_args: Any) -> Path:
        """Write ``checkpoints/step-XXXXXXXX``, read it back, point ``latest`` at it, then prune.

        ``latest`` moves only to a checkpoint whose files match their checksums on disk, and pruning to the
        newest ``keep`` happens only after that, among the checkpoints of earlier steps: the previous good
        checkpoint survives any failure of the new one.
        """
        folder = save_checkpoint(self.step_folder(step), **checkpoint_args)
        previous = self.latest()
        try:
            load_checkpoint(folder, verify=True)
        except UserError as e:
            kept = f"latest still names {previous.name}" if previous else "no earlier checkpoint exists"
            raise UserError(
                f"the checkpoint of step {step} did not read back as written ({e}); {kept}. Check the disk, "
                "then rerun with --resume"
            ) from None
        write_text_atomic(self.root / "latest", folder.name + "\n")
        if keep is not None and keep > 0:
            earlier = sorted(
                p
                for p in self.checkpoints.glob("step-*")
                if p.name < folder.name and (p / "meta.json").is_file()
            )
            for old in earlier[: max(len(earlier) - (keep - 1), 0)]:
                shutil.rmtree(old, ignore_errors=True)
        return folder

    def save_final(self, **checkpoint_args: Any) -> Path:
        return save_checkpoint(self.final, **checkpoint_args)
