"""Files fetched once into a cache folder: the pretrained VQGAN DALLE-pytorch users get with ``--taming``.

The cache is ``$DALLE_DIST_CACHE`` (default ``~/.cache/dalle_dist``); each URL can be redirected with an
environment variable (a mirror, or a local server in the tests). A download goes to a temporary file that
is renamed into place only when complete, so an interrupted one is never mistaken for the file.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .files import fsync_path


@dataclass(frozen=True)
class Remote:
    """A file known by URL: where it is cached, and which variable may point elsewhere."""

    name: str
    url: str
    env: str
    flag: str

    def resolved_url(self) -> str:
        return os.environ.get(self.env) or self.url


# the Taming-Transformers ImageNet VQGAN (f16, 1024 codes) DALLE-pytorch's --taming downloads
VQGAN_MODEL = Remote(
    "vqgan.1024.model.ckpt",
    "https://heibox.uni-heidelberg.de/f/140747ba53464f49b476/?dl=1",
    "DALLE_DIST_VQGAN_MODEL_URL",
    "--vqgan_model_path",
)
VQGAN_CONFIG = Remote(
    "vqgan.1024.config.yml",
    "https://heibox.uni-heidelberg.de/f/6ecf2af6c658432c8298/?dl=1",
    "DALLE_DIST_VQGAN_CONFIG_URL",
    "--vqgan_config_path",
)


def cache_dir() -> Path:
    return Path(os.environ.get("DALLE_DIST_CACHE") or Path.home() / ".cache" / "dalle_dist").expanduser()


def fetch(remote: Remote, log=print) -> Path:
    """The cached copy of ``remote``, downloaded first if it is not there yet."""
    target = cache_dir() / remote.name
    if target.is_file():
        return target
    url = remote.resolved_url()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.part-{os.getpid()}")
    log(f"downloading {url} to {target} (once; later runs use the cached copy)")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as f:
            while chunk := response.read(1 << 20):
                f.write(chunk)
        fsync_path(partial)
        os.replace(partial, target)
    except (urllib.error.URLError, OSError, ValueError) as e:
        partial.unlink(missing_ok=True)
        why = getattr(e, "reason", None) or e
        raise UserError(
            f"could not download {remote.name} from {url} ({why}): download it yourself and pass "
            f"{remote.flag} PATH (or set {remote.env} to a mirror)"
        ) from None
    return target
