"""OpenAI's dVAE as published: ``--openai_enc_path encoder.pkl --openai_dec_path decoder.pkl``, read by a
restricted unpickler that rebuilds only our module classes. No file can be downloaded here, so the test
writes a small replica of OpenAI's ``dall_e`` package (the class names, module tree, attributes and
parameter names of github.com/openai/DALL-E, with a forward of its own), pickles its modules with
``torch.save`` in a separate process (as OpenAI did), and checks that our reader, which never imports
``dall_e``, codes and decodes exactly as the replica does. Hostile pickles are refused unexecuted."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_DALLE, run_cmd

from dalle_dist.errors import UserError
from dalle_dist.models.openai_dvae import map_pixels, unmap_pixels
from dalle_dist.models.pretrained import OpenAIDiscreteVAE

VOCAB = 64

# the replica: OpenAI's layout (names, nesting, attributes) with a forward written for this test
REPLICA = {
    "__init__.py": "",
    "utils.py": """
        from collections import OrderedDict
        import torch
        import torch.nn as nn
        import torch.nn.functional as F

        class Conv2d(nn.Module):
            def __init__(self, n_in, n_out, kw, use_float16=True, device=None, requires_grad=False):
                super().__init__()
                self.n_in, self.n_out, self.kw = n_in, n_out, kw
                self.use_float16, self.device, self.requires_grad = use_float16, device, requires_grad
                scale = 1 / (n_in * kw * kw) ** 0.5
                self.w = nn.Parameter(torch.randn(n_out, n_in, kw, kw) * scale, requires_grad=requires_grad)
                self.b = nn.Parameter(torch.randn(n_out) * 0.1, requires_grad=requires_grad)

            def forward(self, x):
                return F.conv2d(x, self.w, self.b, padding=(self.kw - 1) // 2)

        class Block(nn.Module):  # OpenAI's EncoderBlock and DecoderBlock differ in their kernels
            KERNELS = ()

            def __init__(self, n_in, n_out, n_layers, device=None, requires_grad=False):
                super().__init__()
                self.n_in, self.n_out, self.n_layers = n_in, n_out, n_layers
                self.device, self.requires_grad = device, requires_grad
                self.n_hid, self.post_gain = n_out // 4, 1 / n_layers ** 2
                self.id_path = Conv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
                widths = (n_in, self.n_hid, self.n_hid, self.n_hid, n_out)
                layers = []
                for i, k in enumerate(self.KERNELS):
                    conv = Conv2d(widths[i], widths[i + 1], k)
                    layers += [(f"relu_{i + 1}", nn.ReLU()), (f"conv_{i + 1}", conv)]
                self.res_path = nn.Sequential(OrderedDict(layers))

            def forward(self, x):
                return self.id_path(x) + self.post_gain * self.res_path(x)

        def groups(block, width, n_hid, mults, n_blk, n_layers, name, resample):
            # group_1 .. group_4, a resampling layer ending each but the last; and the width after
            out = []
            for g, mult in enumerate(mults):
                layers = []
                for k in range(n_blk):
                    layers.append((f"block_{k + 1}", block(width, mult * n_hid, n_layers)))
                    width = mult * n_hid
                if g < len(mults) - 1:
                    layers.append((name, resample()))
                out.append((f"group_{g + 1}", nn.Sequential(OrderedDict(layers))))
            return out, width
    """,
    "encoder.py": """
        from collections import OrderedDict
        import torch.nn as nn
        from dall_e.utils import Block, Conv2d, groups

        class EncoderBlock(Block):
            KERNELS = (3, 3, 3, 1)

        class Encoder(nn.Module):
            def __init__(self, group_count=4, n_hid=256, n_blk_per_group=2, input_channels=3, vocab_size=8192,
                         device=None, requires_grad=False, use_mixed_precision=True):
                super().__init__()
                self.group_count, self.n_hid, self.n_blk_per_group = group_count, n_hid, n_blk_per_group
                self.input_channels, self.vocab_size = input_channels, vocab_size
                self.device, self.requires_grad = device, requires_grad
                self.use_mixed_precision = use_mixed_precision
                n_layers = group_count * n_blk_per_group
                parts, width = groups(EncoderBlock, n_hid, n_hid, (1, 2, 4, 8), n_blk_per_group, n_layers,
                                      "pool", lambda: nn.MaxPool2d(kernel_size=2))
                parts.insert(0, ("input", Conv2d(input_channels, n_hid, 7)))
                parts.append(("output", nn.Sequential(OrderedDict([
                    ("relu", nn.ReLU()), ("conv", Conv2d(width, vocab_size, 1, use_float16=False))]))))
                self.blocks = nn.Sequential(OrderedDict(parts))

            def forward(self, x):
                return self.blocks(x).float()
    """,
    "decoder.py": """
        from collections import OrderedDict
        import torch.nn as nn
        from dall_e.utils import Block, Conv2d, groups

        class DecoderBlock(Block):
            KERNELS = (1, 3, 3, 3)

        class Decoder(nn.Module):
            def __init__(self, group_count=4, n_init=128, n_hid=256, n_blk_per_group=2, output_channels=3,
                         vocab_size=8192, device=None, requires_grad=False, use_mixed_precision=True):
                super().__init__()
                self.group_count, self.n_init, self.n_hid = group_count, n_init, n_hid
                self.n_blk_per_group, self.output_channels = n_blk_per_group, output_channels
                self.vocab_size, self.device, self.requires_grad = vocab_size, device, requires_grad
                self.use_mixed_precision = use_mixed_precision
                n_layers = group_count * n_blk_per_group
                parts, width = groups(DecoderBlock, n_init, n_hid, (8, 4, 2, 1), n_blk_per_group, n_layers,
                                      "upsample", lambda: nn.Upsample(scale_factor=2, mode="nearest"))
                parts.insert(0, ("input", Conv2d(vocab_size, n_init, 1, use_float16=False)))
                parts.append(("output", nn.Sequential(OrderedDict([
                    ("relu", nn.ReLU()), ("conv", Conv2d(width, 2 * output_channels, 1))]))))
                self.blocks = nn.Sequential(OrderedDict(parts))

            def forward(self, x):
                return self.blocks(x).float()
    """,
}

# run in a child process with the replica on its path: pickles the modules as OpenAI did (torch.save of
# the whole module) and writes the replica's own outputs for fixed inputs
PICKLE = f"""
import sys, torch, torch.nn.functional as F
from dall_e.encoder import Encoder
from dall_e.decoder import Decoder
out = sys.argv[1]
torch.manual_seed(0)
enc = Encoder(n_hid=8, n_blk_per_group=1, vocab_size={VOCAB})
dec = Decoder(n_init=16, n_hid=8, n_blk_per_group=2, vocab_size={VOCAB})
torch.save(enc, out + "/encoder.pkl")
torch.save(dec, out + "/decoder.pkl")
images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
ids = torch.randint(0, {VOCAB}, (3, 4, 4), generator=torch.Generator().manual_seed(2))
with torch.no_grad():
    logits = enc((1 - 2 * 0.1) * images + 0.1)
    stats = dec(F.one_hot(ids, {VOCAB}).permute(0, 3, 1, 2).float())
torch.save(dict(images=images, logits=logits, ids=ids, stats=stats), out + "/reference.pt")

import os
class Run:  # unpickled, it would run a shell command
    def __reduce__(self):
        return (os.system, ("touch " + out + "/ran",))
enc.hook = Run()
torch.save(enc, out + "/hostile.pkl")  # one of OpenAI's classes with a payload in its saved state
"""


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    """encoder.pkl, decoder.pkl and reference.pt written by the replica in another process."""
    root = tmp_path_factory.mktemp("openai")
    package = root / "src" / "dall_e"
    package.mkdir(parents=True)
    for name, source in REPLICA.items():
        (package / name).write_text(textwrap.dedent(source))
    files = root / "files"
    files.mkdir()
    run_cmd([sys.executable, "-c", PICKLE, files], env={"PYTHONPATH": str(root / "src")})
    return files


def test_the_published_pickles_code_and_decode_as_their_own_classes_do(published):
    vae = OpenAIDiscreteVAE(published / "encoder.pkl", published / "decoder.pkl", image_size=32)
    assert "dall_e" not in sys.modules  # nothing of theirs was imported
    ref = torch.load(published / "reference.pt", weights_only=True)
    assert vae.enc.config() == dict(n_hid=8, n_blk_per_group=1, input_channels=3, vocab_size=VOCAB)
    assert vae.dec.config()["n_blk_per_group"] == 2 and vae.num_tokens == VOCAB
    with torch.no_grad():
        torch.testing.assert_close(vae.enc(map_pixels(ref["images"])), ref["logits"], rtol=1e-5, atol=1e-6)
        assert torch.equal(vae.get_codebook_indices(ref["images"]), ref["logits"].argmax(1).flatten(1))
        expected = unmap_pixels(torch.sigmoid(ref["stats"][:, :3]))
        torch.testing.assert_close(vae.decode(ref["ids"].flatten(1)), expected, rtol=1e-5, atol=1e-6)


def test_the_two_pickles_swapped_are_named(published):
    with pytest.raises(UserError, match="holds OpenAI's decoder: is this the decoder"):
        OpenAIDiscreteVAE(published / "decoder.pkl", published / "encoder.pkl", image_size=32)


class _Payload:
    """Unpickling this creates ``marker``: what a crafted file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_hostile_pickles_are_refused_unexecuted(tmp_path, published):
    marker = tmp_path / "ran"
    torch.save(_Payload(marker), tmp_path / "encoder.pkl")  # a global no dVAE has
    with pytest.raises(UserError, match=r"refused to load OpenAI dVAE encoder .*GLOBAL (io\.)?open.*nothing"):
        OpenAIDiscreteVAE(tmp_path / "encoder.pkl", published / "decoder.pkl", image_size=32)
    with pytest.raises(UserError, match=r"refused to load OpenAI dVAE encoder .*GLOBAL (posix|os)\.system"):
        OpenAIDiscreteVAE(published / "hostile.pkl", published / "decoder.pkl", image_size=32)
    assert not (published / "ran").exists()
    torch.save({"w": torch.zeros(1)}, tmp_path / "plain.pkl")  # plain data, not a module
    with pytest.raises(UserError, match="holds a dict, not a module"):
        OpenAIDiscreteVAE(tmp_path / "plain.pkl", published / "decoder.pkl", image_size=32)
    assert not marker.exists()


def test_train_dalle_and_generate_on_the_published_pickles(tmp_path, published):
    """train_dalle.py --openai_enc_path encoder.pkl --openai_dec_path decoder.pkl, then generate.py: the
    DALL-E checkpoint carries the dVAE's weights, so the pickles are not needed after training."""
    out = tmp_path / "dalle"
    flags = ["--openai_enc_path", published / "encoder.pkl", "--openai_dec_path", published / "decoder.pkl"]
    run_cmd([sys.executable, ROOT / "train_dalle.py", *flags, "--image_size", "32", "--output", out,
             *TINY_DALLE.split(), "--batch_size", "4", "--max_steps", "2",
             "--sample_every", "2"])  # fmt: skip
    meta = json.loads((out / "final" / "meta.json").read_text())
    assert meta["vae"]["config"]["class"] == "OpenAIDiscreteVAE"
    assert meta["vae"]["config"]["enc_path"] == str((published / "encoder.pkl").resolve())
    run_cmd([sys.executable, ROOT / "generate.py", "--dalle_path", out, "--text", "a red circle",
             "--num_images", "2", "--outputs_dir", tmp_path / "gen"])  # fmt: skip
    assert (tmp_path / "gen" / "a_red_circle" / "1.png").is_file()
