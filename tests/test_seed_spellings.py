"""Spellings users bring from DALLE-pytorch's README and its early releases (issue [2/6]): each is
accepted and does what the current spelling does."""

import pytest
import torch

from dalle_dist import DALLE, ByteTokenizer, DiscreteVAE
from dalle_dist.checkpoint import describe_vae, load_dalle, save_checkpoint
from dalle_dist.generation import build_parser


def tiny_vae() -> DiscreteVAE:
    return DiscreteVAE(image_size=16, num_tokens=32, codebook_dim=16, num_layers=2, hidden_dim=16)


def test_return_recon_loss_is_return_loss():
    vae = tiny_vae()
    images = torch.rand(2, 3, 16, 16)
    torch.manual_seed(0)
    old = vae(images, return_recon_loss=True)
    torch.manual_seed(0)
    new = vae(images, return_loss=True)
    assert old.ndim == 0 and torch.equal(old, new)


def test_gentext_is_gentxt():
    parser = build_parser()
    assert parser.parse(["--dalle_path", "r", "--text", "a", "--gentext"]).gentxt is True
    assert parser.parse(["--dalle_path", "r", "--text", "a"]).gentxt is False


def test_generate_texts_with_the_tokenizer_a_loaded_model_knows(tmp_path):
    tokenizer = ByteTokenizer()
    vae = tiny_vae()
    dalle = DALLE(vae=vae, num_text_tokens=tokenizer.vocab_size, text_seq_len=8, dim=32, depth=1, heads=2,
                  dim_head=16)  # fmt: skip
    with pytest.raises(ValueError, match="needs the tokenizer"):
        dalle.generate_texts("a red")  # built by hand: it does not know one
    meta = {"model": dalle.config(), "vae": describe_vae(vae)}
    save_checkpoint(tmp_path / "ck", kind="dalle", meta=meta, module=dalle, tokenizer=tokenizer)
    loaded, _, _ = load_dalle(tmp_path / "ck")
    torch.manual_seed(1)
    tokens, texts = loaded.generate_texts("a red")  # DALLE-pytorch's README spelling
    torch.manual_seed(1)
    tokens_2, texts_2 = loaded.generate_texts(tokenizer, "a red")
    assert torch.equal(tokens, tokens_2) and texts == texts_2
    assert tokens.shape == (1, 8) and texts[0].startswith("a red")
