"""Units of the training package: read order, learning-rate schedule, checkpoints and run directories."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ROOT

from dalle_dist.checkpoint import (
    RunDirectory,
    describe_vae,
    load_checkpoint,
    load_vae,
    meta_digest,
    save_checkpoint,
)
from dalle_dist.data.sampler import EpochBatches, split_indices
from dalle_dist.errors import UserError
from dalle_dist.generation import prompt_folder
from dalle_dist.models import DiscreteVAE
from dalle_dist.training.schedule import LRSchedule


def test_epoch_batches_are_seeded_and_resumable():
    idx = list(range(50))
    full = list(EpochBatches(idx, 8, seed=3, epoch=2))
    assert full == list(EpochBatches(idx, 8, seed=3, epoch=2))
    assert full != list(EpochBatches(idx, 8, seed=3, epoch=1))
    assert sorted(i for batch in full for _, i in batch) == idx, "one epoch reads every item once"
    assert list(EpochBatches(idx, 8, seed=3, epoch=2, skip=4)) == full[4:]
    assert len(EpochBatches(idx, 8, seed=3, epoch=2, skip=4)) == len(full) - 4


def test_ranks_read_disjoint_slices_of_each_global_batch():
    idx = list(range(40))
    ranks = [list(EpochBatches(idx, 4, seed=0, epoch=0, rank=r, world_size=3)) for r in range(3)]
    assert len({len(r) for r in ranks}) == 1, "every rank steps the same number of times"
    seen = [i for r in ranks for batch in r for _, i in batch]
    assert len(seen) == len(set(seen)) == 36  # 40 // 12 global batches of 12
    single = [i for batch in EpochBatches(idx, 12, seed=0, epoch=0) for _, i in batch][:36]
    assert sorted(seen) == sorted(single), "ranks together read what one process would read"


def test_split_indices_is_seeded_and_disjoint():
    train, val = split_indices(100, 0.1, seed=0)
    assert len(val) == 10 and not set(train) & set(val) and sorted(train + val) == list(range(100))
    assert split_indices(100, 0.1, seed=0) == (train, val)
    assert split_indices(100, 0.0, seed=0) == (list(range(100)), [])


def test_lr_schedule_warmup_cosine_plateau_and_state():
    s = LRSchedule(1.0, kind="cosine", warmup_steps=10, total_steps=110)
    assert s.lr(0) == pytest.approx(0.1) and s.lr(9) == pytest.approx(1.0)
    assert s.lr(60) == pytest.approx(0.5, abs=0.01) and s.lr(110) == pytest.approx(1e-6, abs=1e-6)
    p = LRSchedule(1.0, kind="plateau", plateau_patience=2)
    for loss in (1.0, 1.0, 1.0, 1.0):
        p.observe(loss)
    assert p.lr(0) == pytest.approx(0.5)
    q = LRSchedule(1.0, kind="plateau", plateau_patience=2)
    q.load_state_dict(p.state_dict())
    assert q.lr(5) == p.lr(5)
    e = LRSchedule(1.0, epoch_decay=0.5)
    e.end_of_epoch()
    e.end_of_epoch()
    assert e.lr(0) == pytest.approx(0.25)


def _vae() -> DiscreteVAE:
    return DiscreteVAE(image_size=16, num_layers=2, num_tokens=8, codebook_dim=8, hidden_dim=8)


def test_checkpoint_round_trip_and_checksum(tmp_path):
    vae = _vae()
    folder = save_checkpoint(
        tmp_path / "ck",
        kind="vae",
        module=vae,
        meta={"vae": describe_vae(vae), "step": 7},
        training_state={"step": 7, "rng": torch.get_rng_state()},
    )
    loaded, ckpt = load_vae(folder)
    assert ckpt.step == 7 and ckpt.training_state()["step"] == 7
    for k, v in vae.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    raw = bytearray((folder / "model.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(UserError, match="does not match its checksum"):
        load_checkpoint(folder)


def test_training_state_is_loaded_without_unpickling_code(tmp_path):
    vae = _vae()
    folder = save_checkpoint(
        tmp_path / "ck", kind="vae", module=vae, meta={"vae": describe_vae(vae)}, training_state={"step": 1}
    )

    class Boom:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    torch.save({"step": Boom()}, folder / "training_state.pt")
    meta = json.loads((folder / "meta.json").read_text())
    meta["checksums"].pop("training_state.pt")  # get past the checksum to reach the unpickler
    meta["meta_sha256"] = meta_digest(meta)
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="refused to load"):
        load_checkpoint(folder).training_state()
    assert not (tmp_path / "pwned").exists()


def test_run_directory_latest_keep_and_final(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.prepare(resume=False)
    vae = _vae()
    args = {"kind": "vae", "module": vae, "meta": {"vae": describe_vae(vae)}, "training_state": {"step": 0}}
    for step in (1, 2, 3):
        run.save_step(step, keep=2, **args)
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["step-00000002", "step-00000003"]
    assert run.latest() == run.checkpoints / "step-00000003"
    run.save_final(kind="vae", module=vae, meta={"vae": describe_vae(vae)})
    run.save_final(kind="vae", module=vae, meta={"vae": describe_vae(vae)})  # replacing final is atomic too
    assert load_checkpoint(run.root).path == run.final
    assert not [p for p in run.root.rglob(".tmp-*")] and not [p for p in run.root.rglob(".old-*")]
    with pytest.raises(UserError, match="already holds a run"):
        RunDirectory(tmp_path / "run").prepare(resume=False)
    with pytest.raises(UserError, match="no checkpoint to resume"):
        RunDirectory(tmp_path / "fresh").prepare(resume=True)


def test_prompt_folder_follows_dalle_pytorch(tmp_path):
    assert prompt_folder(tmp_path, "a red circle").name == "a_red_circle"
    assert prompt_folder(tmp_path, "x" * 150).name == "x" * 100
    assert prompt_folder(tmp_path, "a/b").parent == tmp_path


def test_precision_flags():
    from dalle_dist.distributed import Precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert Precision.from_flags(cpu).name == "fp32"
    # --amp is mixed precision where it pays: bf16 on a CPU with bf16 arithmetic, fp32 (noted) elsewhere
    native = Precision.from_flags(cpu, amp=True, cpu_bf16=True)
    assert (native.name, native.amp, native.note) == ("bf16", True, "")
    emulated = Precision.from_flags(cpu, amp=True, cpu_bf16=False)
    assert (emulated.name, emulated.amp) == ("fp32", False) and "--amp: this CPU has no bf16" in emulated.note
    assert Precision.from_flags(cuda, amp=True, cpu_bf16=False).name == "fp16"
    # an explicit --bf16 is kept, with a note where it is emulated
    assert Precision.from_flags(cpu, bf16=True, cpu_bf16=True).note == ""
    forced = Precision.from_flags(cpu, bf16=True, cpu_bf16=False)
    assert forced.dtype == torch.bfloat16 and "drop --bf16" in forced.note
    assert Precision.from_flags(cuda, bf16=True, cpu_bf16=False).note == ""
    with pytest.raises(UserError, match=r"--fp16 needs a CUDA GPU.*--bf16"):
        Precision.from_flags(cpu, fp16=True)


def test_bf16_autocast_loss_matches_fp32():
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from conftest import small_dalle

    from dalle_dist.distributed import Precision

    dalle = small_dalle(dim=64, heads=4)
    text, image = torch.randint(1, 50, (4, 6)), torch.randint(0, 32, (4, 16))
    fp32 = dalle(text, image, return_loss=True)
    with Precision("bf16", torch.device("cpu")).autocast():
        bf16 = dalle(text, image, return_loss=True)
    assert bf16.dtype == torch.float32  # the loss itself is computed in fp32
    assert abs(bf16.item() - fp32.item()) / fp32.item() < 0.02


def test_parsed_flags_are_read_only():
    """What the flags mean goes into typed configs: writing into the parsed flags fails at once."""
    from dalle_dist.training.vae_job import build_parser

    args = build_parser().parse(["--batch_size", "3"])
    assert args.batch_size == 3
    with pytest.raises(AttributeError, match="read-only"):
        args.batch_size = 4
    with pytest.raises(AttributeError, match="read-only"):
        del args.image_size


def test_flags_become_configs_once():
    from dalle_dist.data import DataError
    from dalle_dist.training.dalle_job import build_parser, model_config
    from dalle_dist.training.flags import backend_config, data_config

    parse = build_parser().parse
    args = parse(
        ["--deepspeed", "--zero_stage", "2", "--batch_size", "3", "--stable_softmax", "--depth", "3"]
    )
    backend = backend_config(args)
    assert (backend.name, backend.batch_size, backend.engine_options["deepspeed"].zero_stage) == (
        "deepspeed",
        3,
        2,
    )
    with pytest.raises(UserError, match="--deepspeed and --distributed_backend ddp name two engines"):
        backend_config(parse(["--deepspeed", "--distributed_backend", "ddp"]))
    config = model_config(args, num_text_tokens=77)
    assert (config.stable, config.depth, config.num_text_tokens, config.attn_types) == (
        True,
        3,
        77,
        ("full",) * 3,
    )
    assert data_config(args, None).image_size == 32 and data_config(args, "folder").image_size == 128
    assert data_config(args, "folder", image_size=64).image_size == 64
    with pytest.raises(DataError, match="--wds needs --image_text_folder"):
        data_config(parse(["--wds", "jpg,txt"]), None)


def test_the_dataset_registry_picks_the_kind(tmp_path):
    from dalle_dist.data import DataConfig, ShapesDataset, build_dataset, dataset_kind

    assert dataset_kind(DataConfig()) == "shapes"
    assert dataset_kind(DataConfig(location=str(tmp_path))) == "folder"
    assert dataset_kind(DataConfig(location=str(tmp_path), shard_keys="jpg,txt")) == "shards"
    dataset = build_dataset(DataConfig(dataset_size=5, image_size=16))
    assert isinstance(dataset, ShapesDataset) and len(dataset) == 5 and dataset.image_size == 16


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_works_with_the_data_flags_it_is_documented_with(config, tmp_path):
    """configs/ hold model and training settings: the built-in data, a folder and (train_dalle) shards
    all take them (a data-specific setting such as --holdout belongs on the demo's command line)."""
    from dalle_dist.training import autoencoder_job, clip_job, dalle_job, decoder_job, prior_job, vae_job
    from dalle_dist.training.flags import data_config

    parsers = {
        "autoencoder": autoencoder_job,
        "vae": vae_job,
        "dalle": dalle_job,
        "clip": clip_job,
        "prior": prior_job,
        "decoder": decoder_job,
    }
    build = parsers[config.stem.split("_")[-1]].build_parser
    for extra, location in (([], None), ([], tmp_path), (["--wds", "jpg,txt"], tmp_path)):
        args = build().parse(["--config", str(config), *extra])
        assert data_config(args, location).location == (None if location is None else str(location))


def test_the_demo_decoder_config_builds_on_the_demo_autoencoder_and_only_there():
    """configs/demo_decoder.yaml counts its resolutions in the latent pixels of configs/demo_autoencoder.yaml
    (16, 8, 4): built together they make a latent decoder; without the autoencoder (a 32 px pixel UNet)
    the config does not fit, so every user of it (make demo-dalle2, the Fashion-MNIST example) must pass
    --autoencoder_path."""
    pytest.importorskip("diffusers", reason="diffusers is a dependency of dalle_dist: pip install -e .")
    from dalle_dist import CLIP
    from dalle_dist.models.autoencoder import Autoencoder
    from dalle_dist.training import autoencoder_job, decoder_job

    ae_args = autoencoder_job.build_parser().parse(["--config", str(ROOT / "configs/demo_autoencoder.yaml")])
    ae = Autoencoder(image_size=32, **{flag: getattr(ae_args, flag) for flag in autoencoder_job.MODEL_FLAGS})
    clip = CLIP(dim_text=32, dim_image=32, dim_latent=16, num_text_tokens=64, text_enc_depth=1,
                text_seq_len=16, text_heads=2, visual_enc_depth=1, visual_heads=2, visual_image_size=32,
                visual_patch_size=4, dim_head=16)  # fmt: skip
    args = decoder_job.build_parser().parse(
        ["--config", str(ROOT / "configs/demo_decoder.yaml"), "--clip_path", "c"]
    )
    decoder = decoder_job.build(clip, args, 32, ae)
    assert (decoder.unet_size, decoder.unet_channels) == (ae.latent_size, ae.latent_channels) == (16, 4)
    with pytest.raises(
        ValueError, match=r"attention_resolutions \[8, 4\] must be among the UNet's resolutions"
    ):
        decoder_job.build(clip, args, 32)


def test_decoder_attention_resolutions_are_a_set_so_a_resume_may_list_them_in_any_order():
    """The decoder keeps its attention resolutions largest first; the flag reads them the same way, so a
    resume given ``8,16`` matches a run made with ``16,8``, and another set is still refused."""
    pytest.importorskip("diffusers", reason="diffusers is a dependency of dalle_dist: pip install -e .")
    from dalle_dist.training.decoder_job import build_parser
    from dalle_dist.training.flags import refuse_changed_flags

    parse = build_parser().parse
    args = parse(["--clip_path", "clip", "--attention_resolutions", "8,16,8"])
    assert args.attention_resolutions == [16, 8]
    refuse_changed_flags(args, {"attention_resolutions": [16, 8]}, "the run fixes its model")
    other = parse(["--clip_path", "clip", "--attention_resolutions", "4,16"])
    with pytest.raises(UserError, match=r"--attention_resolutions 16,4 \(it has 16,8\)"):
        refuse_changed_flags(other, {"attention_resolutions": [16, 8]}, "the run fixes its model")
