"""The diffusion process DALL-E 2's prior and decoder share: diffusers' schedulers do the arithmetic (the
cosine ᾱ schedule of Nichol & Dhariwal 2021, q(x_t | x_0), the DDPM / DDIM / DPM-Solver++ steps); this
module picks them, gives them one sampling loop with classifier-free guidance, and says what the network
predicts.

Prediction targets (``prediction``): the decoder predicts ``v = sqrt(ᾱ) ε - sqrt(1 - ᾱ) x_0`` (Salimans &
Ho 2022): under the cosine schedule ᾱ reaches ~0 at the last steps, where an ε-prediction says almost
nothing about x_0 and a x_0-prediction nothing about ε; v stays informative at both ends. The prior
predicts the clean embedding itself (``"sample"``), as the DALL-E 2 paper does.

Loss weighting (``Diffusion.loss``, ``min_snr_gamma``): Min-SNR-γ (Hang et al. 2023) weights each sample's
error as an x_0 error times min(SNR_t, γ), so the nearly clean steps, where the task is easy and the
plain loss is large, stop dominating the gradient. For the decoder it was ahead of the plain loss on
average over three runs, with a wide spread (bench/RESULTS.md, "`make demo-dalle2` with min-SNR-5").
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.training_utils import compute_snr
from torch import Tensor

SAMPLERS = ("ddpm", "ddim", "dpm")  # ancestral, deterministic (η = 0 by default), DPM-Solver++ (2nd order)
PREDICTIONS = ("v_prediction", "epsilon", "sample")


class Diffusion:
    """``timesteps`` training steps of the cosine schedule; ``prediction`` is the network's target."""

    def __init__(self, timesteps: int = 1000, prediction: str = "v_prediction") -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
        self.timesteps, self.prediction = timesteps, prediction
        # no clipping inside the schedulers: the decoder's pixels are clamped once at the end, and the
        # prior's embeddings have no [-1, 1] range
        self.scheduler = DDPMScheduler(
            num_train_timesteps=timesteps,
            beta_schedule="squaredcos_cap_v2",
            prediction_type=prediction,
            clip_sample=False,
            # the first sampling step at the last training step, whatever --steps (Lin et al. 2024): with
            # diffusers' default "leading" spacing a 25-step DDIM starts where the noise is not yet pure
            timestep_spacing="trailing",
        )

    @property
    def alphas_cumprod(self) -> Tensor:
        """ᾱ_t for t = 0 .. timesteps - 1 (decreasing from ~1 to ~0)."""
        return self.scheduler.alphas_cumprod

    def training_draws(
        self, x0: Tensor, uniforms: int, seeds: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """A training step's randomness for ``x0`` ``[B, ...]``: noise like it, timesteps ``[B]`` and
        ``uniforms`` numbers in [0, 1) per sample (condition dropout). With ``seeds`` ``[B]`` each
        sample's draws come from its own seed, so they do not depend on how a batch is split over ranks
        (2 ranks x b then train as 1 x 2b); without, from the global generator."""
        b, device = x0.shape[0], x0.device
        if seeds is None:
            t = torch.randint(0, self.timesteps, (b,), device=device)
            return torch.randn_like(x0), t, torch.rand(b, uniforms, device=device)
        noise, t, u = [], [], []
        for seed in seeds.tolist():
            g = torch.Generator().manual_seed(int(seed))
            t.append(torch.randint(0, self.timesteps, (), generator=g))
            noise.append(torch.randn(x0.shape[1:], generator=g))
            u.append(torch.rand(uniforms, generator=g))
        move = {"device": device}
        return (
            torch.stack(noise).to(dtype=x0.dtype, **move),
            torch.stack(t).to(**move),
            torch.stack(u).to(**move),
        )

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """q(x_t | x_0): ``sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) noise``."""
        return self.scheduler.add_noise(x0, noise, t)

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the network is trained to output for ``x_t = add_noise(x0, noise, t)``."""
        if self.prediction == "v_prediction":
            return self.scheduler.get_velocity(x0, noise, t)
        return noise if self.prediction == "epsilon" else x0

    def loss(
        self, prediction: Tensor, x0: Tensor, noise: Tensor, t: Tensor, min_snr_gamma: float = 0.0
    ) -> Tensor:
        """Mean squared error of the network's ``prediction`` for ``add_noise(x0, noise, t)`` against its
        target, in fp32. With ``min_snr_gamma`` γ > 0 each sample's mean error is weighted so that it
        equals min(SNR_t, γ) times its x_0 error (SNR = ᾱ / (1 - ᾱ)): by min(SNR, γ) / (SNR + 1) for v,
        min(1, γ / SNR) for ε, min(SNR, γ) for x_0. Per sample, so 2 ranks x b train as 1 x 2b."""
        error = (prediction.float() - self.target(x0, noise, t).float()).pow(2)
        if min_snr_gamma <= 0:
            return error.mean()
        snr = compute_snr(self.scheduler, t)
        if self.prediction == "v_prediction":
            weight = snr.clamp(max=min_snr_gamma) / (snr + 1)
        elif self.prediction == "epsilon":
            weight = (min_snr_gamma / snr).clamp(max=1.0)
        else:
            weight = snr.clamp(max=min_snr_gamma)
        return (error.flatten(1).mean(1) * weight).mean()

    def sampler(self, name: str = "ddim", steps: int | None = None):
        """A fresh scheduler of kind ``name`` set to ``steps`` steps (default: every training step)."""
        config = self.scheduler.config
        if name == "ddpm":
            scheduler = DDPMScheduler.from_config(config)
        elif name == "ddim":
            scheduler = DDIMScheduler.from_config(config, set_alpha_to_one=True)  # its last step lands on x_0
        elif name == "dpm":
            scheduler = DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
        else:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")
        scheduler.set_timesteps(steps or self.timesteps)
        return scheduler

    @torch.no_grad()
    def sample(
        self,
        model: Callable[[Tensor, Tensor], Tensor],
        shape: tuple[int, ...],
        *,
        device: torch.device,
        steps: int | None = None,
        sampler: str = "ddim",
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """x_0 drawn by running ``model(x_t, t)`` (its prediction, guidance already applied) from noise
        through ``steps`` steps of ``sampler``; ``eta`` is DDIM's noise (1: as random as DDPM's)."""
        scheduler = self.sampler(sampler, steps)
        x = torch.randn(shape, generator=generator, device=device) * scheduler.init_noise_sigma
        extra = {"eta": eta} if sampler == "ddim" else {}
        for t in scheduler.timesteps:
            step_t = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
            prediction = model(scheduler.scale_model_input(x, t), step_t)
            x = scheduler.step(prediction.float(), t, x, generator=generator, **extra).prev_sample
        return x

    def sample_guided(
        self,
        predict: Callable[..., Tensor],
        shape: tuple[int, ...],
        cond: dict[str, Tensor],
        uncond: dict[str, Tensor],
        *,
        cond_scale: float,
        device: torch.device,
        steps: int | None,
        sampler: str,
        generator: torch.Generator | None,
    ) -> Tensor:
        """``sample`` with ``predict(x_t, t, **inputs)`` guided from its ``uncond`` inputs to its ``cond``."""
        run = guided(predict, cond_scale)
        return self.sample(
            lambda x, t: run(x, t, cond, uncond),
            shape,
            device=device,
            steps=steps,
            sampler=sampler,
            generator=generator,
        )


def guided(model: Callable[..., Tensor], cond_scale: float) -> Callable[[Tensor, Tensor, dict, dict], Tensor]:
    """Classifier-free guidance (Ho & Salimans 2022): ``uncond + s (cond - uncond)``, one batch of both.
    ``model(x, t, **inputs)``; scale 1 runs the conditional model alone."""

    def run(x: Tensor, t: Tensor, cond: dict, uncond: dict) -> Tensor:
        if cond_scale == 1.0:
            return model(x, t, **cond)
        both = {k: torch.cat([cond[k], uncond[k]]) for k in cond}
        out_cond, out_uncond = model(torch.cat([x, x]), torch.cat([t, t]), **both).chunk(2)
        return out_uncond + cond_scale * (out_cond - out_uncond)

    return run
