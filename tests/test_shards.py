"""WebDataset shards: written by webdataset's ShardWriter and by plain tar, read from files, folders,
brace patterns, pipe: and http://; exactly once per epoch over ranks x workers; broken samples skipped and
counted; the same samples as the folder; and train_dalle.py --wds end to end with an exact resume."""

from __future__ import annotations

import io
import random
import socket
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_DALLE, TINY_VAE, free_port, run_cmd
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import DataLoader

pytest.importorskip("webdataset", reason="webdataset is a dependency of dalle_dist: pip install -e .")

from dalle_dist.data import FolderDataset
from dalle_dist.data.make_shards import main as make_shards_main
from dalle_dist.data.shards import Keys, ShardDataset, Skipped, resolve_shards, worker_skips

N = 23  # not a multiple of anything: ranks get equal shares and the tail is dropped
KEYS = Keys.parse("png,txt")


def caption_of(i: int) -> str:
    return f"a picture number {i}"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for i in range(N):
        pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)  # square: every crop is the whole image
        Image.fromarray(pixels).save(root / f"img{i:03d}.png")
        (root / f"img{i:03d}.txt").write_text(caption_of(i) + "\n")
    return root


@pytest.fixture(scope="module")
def shards(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    assert make_shards_main([str(folder), str(out), "--maxcount", "5"]) == 0
    return out


def read_all(dataset: ShardDataset, epoch: int = 0, rank: int = 0, world: int = 1, workers: int = 0, skip=0):
    return list(DataLoader(dataset.stream(epoch, rank, world, skip), batch_size=None, num_workers=workers))


def test_folder_and_shards_give_the_same_samples(folder, shards):
    assert len(list(shards.glob("shard-*.tar"))) == 5  # 23 samples, 5 per shard
    stream = ShardDataset(shards, KEYS, 16, resize_ratio=1.0, shuffle_buffer=1)
    assert stream.num_slots == N
    got = {captions[0]: image for image, captions in read_all(stream)}
    assert len(got) == N  # one rank: every slot
    plain = FolderDataset(folder, 16, resize_ratio=1.0)
    for i in range(len(plain)):
        image, captions = plain.get(i, random.Random(0))
        torch.testing.assert_close(got[captions[0]], image, atol=0, rtol=0)


def test_plain_tar_pipe_and_brace_pattern(folder, tmp_path):
    tar = tmp_path / "all.tar"
    subprocess.run(["tar", "--sort=name", "-cf", str(tar), "-C", str(folder), "."], check=True)
    gz = tmp_path / "all.tar.gz"
    subprocess.run(["tar", "--sort=name", "-czf", str(gz), "-C", str(folder), "."], check=True)
    for location in (tar, gz, f"pipe:cat {tar}"):
        stream = ShardDataset(location, KEYS, 16, shuffle_buffer=1)
        captions = sorted(c[0] for _, c in read_all(stream))
        assert captions == sorted(caption_of(i) for i in range(N)), location
    assert resolve_shards(str(tmp_path / "s-{000..002}.tar")) == [
        str(tmp_path / f"s-{i:03d}.tar") for i in range(3)
    ]


@pytest.mark.parametrize("num_shards", [5, 1])
def test_two_ranks_two_workers_read_each_sample_once_per_epoch(folder, tmp_path, num_shards):
    out = tmp_path / "s"
    assert make_shards_main([str(folder), str(out), "--maxcount", str(-(-N // num_shards))]) == 0
    stream = ShardDataset(out, KEYS, 16, shuffle_buffer=4)
    orders = []
    for epoch in (0, 1):
        per_rank = [[c[0] for _, c in read_all(stream, epoch, rank, 2, workers=2)] for rank in (0, 1)]
        assert len(per_rank[0]) == len(per_rank[1]) == N // 2, "equal shares: ranks step together"
        seen = per_rank[0] + per_rank[1]
        assert len(set(seen)) == len(seen), "no sample twice in an epoch"
        orders.append(seen)
    assert orders[0] != orders[1], "each epoch has its own order"
    # the read order is a pure function of (seed, epoch): read again, the same
    again = [c[0] for _, c in read_all(stream, 1, 0, 2, workers=2)]
    assert again == orders[1][: N // 2]


def test_resume_skips_slots_before_decoding(shards):
    stream = ShardDataset(shards, KEYS, 16, shuffle_buffer=3)
    full = [c[0] for _, c in read_all(stream, 2, 0, 1, workers=2)]
    for skip in (0, 1, 4, 7, 20):
        epoch = stream.stream(2, 0, 1, skip)
        loader = iter(DataLoader(epoch, batch_size=None, num_workers=2))
        for _ in range(epoch.skip_plan(2)[1]):  # what the training loop drops itself
            next(loader)
        assert [c[0] for _, c in loader] == full[skip:], skip
    # round-robin over live workers: 2 rounds of 3, then 1 round of 2 (worker 1 ran dry); 1 left over
    assert worker_skips([5, 2, 4], 9) == ([3, 2, 3], 1)


def test_resampled_mode(shards):
    """Each worker draws whole shards with replacement: equal counts per rank, seeded, resumable."""
    stream = ShardDataset(shards, KEYS, 16, shuffle_buffer=3, resampled=True)
    per_rank = [[c[0] for _, c in read_all(stream, 0, rank, 2, workers=2)] for rank in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == N // 2
    assert per_rank[0] != per_rank[1]
    assert [c[0] for _, c in read_all(stream, 0, 1, 2, workers=2)] == per_rank[1]
    epoch = stream.stream(0, 1, 2, 5)
    loader = iter(DataLoader(epoch, batch_size=None, num_workers=2))
    for _ in range(epoch.skip_plan(2)[1]):
        next(loader)
    assert [c[0] for _, c in loader] == per_rank[1][5:]


def test_broken_samples_are_skipped_and_counted(folder, tmp_path):
    out = tmp_path / "bad"
    out.mkdir()

    def member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    good = (folder / "img000.png").read_bytes()
    with tarfile.open(out / "a.tar", "w") as tar:
        member(tar, "k1.png", good)
        member(tar, "k1.txt", b"fine")
        member(tar, "k2.png", b"not a png at all")
        member(tar, "k2.txt", b"broken image")
        member(tar, "k3.png", good)  # no caption
        member(tar, "k4.png", good)
        member(tar, "k4.txt", b"  \n")
        member(tar, "k5.png", good)
        member(tar, "k5.txt", b"\xff\xfe not utf-8")
        member(tar, "k6.txt", b"no image")
    full = out / "b.tar"
    with tarfile.open(full, "w") as tar:
        for i in range(4):
            member(tar, f"t{i}.png", good)
            member(tar, f"t{i}.txt", f"t{i}".encode())
    with tarfile.open(full) as tar:
        cut = tar.getmember("t2.png").offset_data + 100
    (out / "b.tar").write_bytes(full.read_bytes()[:cut])  # breaks off inside t2.png's data
    stream = ShardDataset(str(out / "{a,b,missing}.tar"), KEYS, 16, shuffle_buffer=1)
    slots = read_all(stream)
    kinds = Counter(s.kind for s in slots if isinstance(s, Skipped))
    good_captions = sorted(c[0] for s in slots if not isinstance(s, Skipped) for c in [s[1]])
    assert good_captions == ["fine", "t0", "t1"]
    assert kinds == {
        "broken image": 1,
        "missing caption": 1,
        "empty caption": 1,
        "caption not UTF-8": 1,
        "missing image": 1,
    }, kinds
    # shard-level problems are found once, when the shards are counted; the loop reports them
    assert sorted((p.kind, Path(p.shard).name) for p in stream.shard_problems) == [
        ("missing shard", "missing.tar"),
        ("truncated shard", "b.tar"),
    ]
    broken = next(s for s in slots if isinstance(s, Skipped) and s.kind == "broken image")
    assert broken.shard.endswith("a.tar") and broken.key == "k2"


def test_shards_stream_over_http(shards):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=shards,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        stream = ShardDataset(f"http://127.0.0.1:{port}/shard-{{000000..000004}}.tar", KEYS, 16)
        assert stream.num_slots == N
        assert sorted(c[0] for _, c in read_all(stream, workers=2)) == sorted(caption_of(i) for i in range(N))
    finally:
        server.terminate()
        server.wait()


def test_make_shards_mixes_a_sorted_folder_unless_in_order(folder, tmp_path):
    """A folder sorted by class must not become one-class shards: samples go in a seeded random order."""

    def first_shard_keys(*flags: str) -> list[str]:
        out = tmp_path / "_".join(flags or ("default",))
        assert make_shards_main([str(folder), str(out), "--maxcount", "5", *flags]) == 0
        with tarfile.open(out / "shard-000000.tar") as tar:
            return [m.name.rsplit(".", 1)[0] for m in tar.getmembers() if m.name.endswith(".txt")]

    ordered = first_shard_keys("--in_order")
    assert ordered == [f"img{i:03d}" for i in range(5)]
    mixed = first_shard_keys()
    assert len(mixed) == 5 and mixed != ordered
    assert first_shard_keys("--seed", "0") == mixed  # the default seed: repeatable
    assert first_shard_keys("--seed", "1") != mixed


def test_make_shards_and_wds_flags_bad_input(tmp_path):
    with pytest.raises(SystemExit, match="is not a folder"):
        make_shards_main([str(tmp_path / "nope"), str(tmp_path / "out")])
    from dalle_dist.data import DataError

    with pytest.raises(DataError, match=r"e\.g\. --wds jpg,txt"):
        Keys.parse("jpg")
    with pytest.raises(DataError, match="does not exist"):
        resolve_shards(tmp_path / "nothing.tar")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no \.tar"):
        resolve_shards(tmp_path / "empty")


def run(cmd: list, env_threads: int = 1) -> subprocess.CompletedProcess:
    return run_cmd(cmd, OMP_NUM_THREADS=str(env_threads))


@pytest.mark.slow
def test_train_dalle_on_shards_resumes_exactly(tmp_path, shards):
    vae = tmp_path / "vae"
    run([sys.executable, ROOT / "train_vae.py", "--output", vae, "--max_steps", "1", *TINY_VAE.split()])
    common = [sys.executable, ROOT / "train_dalle.py", "--vae_path", vae, "--wds", "png,txt",
              "--image_text_folder", shards, "--batch_size", "3", "--num_workers", "2",
              "--shuffle_buffer", "4", "--save_every_n_steps", "5", "--log_every", "1",
              "--sample_every", "100", *TINY_DALLE.split()]  # fmt: skip
    # 23 samples, batch 3: 7 steps an epoch; 2 epochs, stopped at step 5 (mid-epoch) and resumed
    straight = run([*common, "--output", tmp_path / "a", "--epochs", "2"])
    assert "7 steps/epoch, 14 steps" in straight.stdout
    run([*common, "--output", tmp_path / "b", "--epochs", "2", "--max_steps", "5"])
    # the resumed run keeps its recorded flags (--max_steps 5 included): the new budget is given
    resumed = run([*common, "--output", tmp_path / "b", "--epochs", "2", "--max_steps", "14", "--resume"])
    assert "resuming" in resumed.stdout
    a = load_file(tmp_path / "a" / "final" / "model.safetensors")
    b = load_file(tmp_path / "b" / "final" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=key)
    gen = run([sys.executable, ROOT / "generate.py", "--dalle_path", tmp_path / "a", "--text", "a picture",
               "--num_images", "2", "--outputs_dir", tmp_path / "gen"])  # fmt: skip
    assert "2 images" in gen.stdout
    # 2 ranks x 2 workers under torchrun: 11 slots per rank, batch 3 -> 3 steps an epoch, ranks identical
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    ddp = run([*torchrun, *common[1:], "--output", tmp_path / "ddp", "--epochs", "1"])
    assert "3 steps/epoch" in ddp.stdout and "weights identical on all 2 ranks: yes" in ddp.stdout


def test_wds_val_holds_out_whole_shards(tmp_path, shards):
    """--wds_val: validation shards read like the training ones; their loss is logged, on 1 and 2 ranks;
    --validation_fraction on a stream and --wds_val without --wds are refused in one line naming the fix."""
    import json

    vae = tmp_path / "vae"
    run([sys.executable, ROOT / "train_vae.py", "--output", vae, "--max_steps", "1", *TINY_VAE.split()])
    train, held_out = sorted(shards.glob("shard-*.tar"))[:-1], sorted(shards.glob("shard-*.tar"))[-1]
    pattern = str(shards / f"shard-{{000000..{len(train) - 1:06d}}}.tar")
    common = ["--vae_path", vae, "--wds", "png,txt", "--image_text_folder", pattern,
              "--batch_size", "1", "--eval_every", "2", "--max_steps", "2", "--sample_every", "100",
              *TINY_DALLE.split()]  # fmt: skip
    one = run(
        [sys.executable, ROOT / "train_dalle.py", *common, "--wds_val", held_out, "--output", tmp_path / "a"]
    )
    assert "training dalle: 20 samples" in one.stdout, one.stdout  # the held-out shard's 3 are not trained on
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [2], records
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--master_port={free_port()}",
        "--nproc_per_node=2",
    ]
    two = run(
        [*torchrun, ROOT / "train_dalle.py", *common, "--wds_val", held_out, "--output", tmp_path / "b"]
    )
    assert "step 2: validation loss" in two.stdout and "weights identical on all 2 ranks: yes" in two.stdout
    for extra, words in (
        (["--validation_fraction", "0.1"], "hold out whole shards with --wds_val SHARDS"),
        (["--wds_val", held_out, "--wds", ""], "--wds_val names validation shards for a --wds run"),
    ):
        proc = run_cmd([sys.executable, ROOT / "train_dalle.py", *common, *extra, "--output", tmp_path / "c"],
                       expect=2)  # fmt: skip
        assert proc.stderr.strip().startswith("error: ") and words in proc.stderr, proc.stderr
