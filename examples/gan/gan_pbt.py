"""PBT for a GAN (the paper raised the Inception score of GANs), on scikit-learn's 8x8 digits.

No Inception network can be downloaded here, so the scores use a classifier trained on the
same data (the usual stand-in for small data sets):

* classifier Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` on generated digits (higher is
  better; real held-out digits score close to 10, one repeated digit scores 1), and
* classifier FID: the Frechet distance between the classifier's hidden features of generated
  digits and of real held-out digits (lower is better).

PBT tunes the generator and discriminator learning rates and Adam's beta1.

    pbtune run examples/gan/gan_small.yaml
    python examples/compare.py examples/gan/gan.yaml --seeds 0 1 2
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

import pbtune


@lru_cache(maxsize=1)
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_x, train_y, heldout_x, heldout_y)``: 8x8 digits scaled to [0, 1], fixed 75/25 split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    cut = int(0.75 * len(x))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@lru_cache(maxsize=1)
def scorer() -> tuple[Classifier, np.ndarray, np.ndarray]:
    """The judge: a classifier trained (deterministically) on the training digits, plus the mean
    and covariance of its features on the held-out digits (the FID reference)."""
    torch.set_num_threads(1)
    x, y, hx, hy = digits()
    with torch.random.fork_rng(), torch.enable_grad():  # callers may be under no_grad
        torch.manual_seed(1234)
        model = Classifier()
        optimizer = torch.optim.Adam(model.parameters(), lr=5e-3, weight_decay=1e-4)
        generator = torch.Generator().manual_seed(1234)
        for _ in range(250):  # ~97% held-out accuracy
            index = torch.randint(len(x), (128,), generator=generator)
            noisy = (x[index] + 0.05 * torch.randn(128, 64, generator=generator)).clamp(0, 1)
            loss = nn.functional.cross_entropy(model(noisy), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        features = model.features(hx).double().numpy()
    return model, features.mean(0), np.cov(features, rowvar=False)


@torch.no_grad()
def inception_score(images: torch.Tensor) -> float:
    """Classifier Inception Score of a batch of 64-pixel images in [0, 1]."""
    model = scorer()[0]
    p = torch.softmax(model(images).double(), dim=1)
    marginal = p.mean(0, keepdim=True)
    kl = (p * (torch.log(p + 1e-12) - torch.log(marginal + 1e-12))).sum(1)
    return float(torch.exp(kl.mean()))


@torch.no_grad()
def frechet_distance(images: torch.Tensor) -> float:
    """Classifier FID of ``images`` against the held-out digits."""
    from scipy import linalg

    model, mu_ref, cov_ref = scorer()
    features = model.features(images).double().numpy()
    mu, cov = features.mean(0), np.cov(features, rowvar=False)
    eps = 1e-6 * np.eye(len(mu))  # generated features can be rank-deficient (collapsed modes)
    covmean = linalg.sqrtm((cov + eps) @ (cov_ref + eps)).real
    return float(((mu - mu_ref) ** 2).sum() + np.trace(cov + cov_ref - 2.0 * covmean))


def member_seed(seed: int, hparams: Mapping[str, Any]) -> int:
    text = json.dumps([seed, sorted((k, repr(v)) for k, v in hparams.items())])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % 2**30


class DigitsGAN(pbtune.Trainable):
    """One step = ``iters_per_step`` (discriminator update, generator update) pairs.

    Score: classifier Inception Score of ``eval_samples`` generated digits; FID is reported too.
    The GAN trains on CUDA when torch sees a GPU (``device: auto``, or ``cpu``/``cuda``); the
    judge (a small classifier) scores on CPU. Noise is drawn on CPU, so runs match across devices
    up to floating point.
    """

    def setup(self, hparams: Mapping[str, Any]) -> None:
        torch.set_num_threads(1)
        a = self.args
        device = a.get("device", "auto")
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        self.x = digits()[0].to(self.device)
        self.z_dim = int(a.get("z_dim", 16))
        hidden = int(a.get("hidden", 128))
        self.batch_size = int(a.get("batch_size", 64))
        self.iters_per_step = int(a.get("iters_per_step", 50))
        self.eval_samples = int(a.get("eval_samples", 1000))
        # The runner's per-member seed (self.seed; new after an exploit, so a copy draws other
        # data than its donor); standalone, one from the run seed and the hparams.
        seed = self.seed % 2**31 if self.seed is not None else member_seed(int(a.get("seed", 0)), hparams)
        torch.manual_seed(seed)
        self.generator_net = nn.Sequential(nn.Linear(self.z_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                           nn.LeakyReLU(0.2), nn.Linear(hidden, 64), nn.Sigmoid())
        self.discriminator = nn.Sequential(nn.Linear(64, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                           nn.LeakyReLU(0.2), nn.Linear(hidden, 1))
        self.generator_net.to(self.device)
        self.discriminator.to(self.device)
        self.g_opt = torch.optim.Adam(self.generator_net.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.d_opt = torch.optim.Adam(self.discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.rng = torch.Generator().manual_seed(seed)
        self.eval_noise = torch.randn(self.eval_samples, self.z_dim,
                                      generator=torch.Generator().manual_seed(99)).to(self.device)
        self.set_hparams(hparams)

    def set_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.hparams = dict(hparams)
        beta1 = float(hparams.get("beta1", self.args.get("beta1", 0.5)))
        for optimizer, key in ((self.g_opt, "g_lr"), (self.d_opt, "d_lr")):
            for group in optimizer.param_groups:
                group["lr"] = float(hparams.get(key, self.args.get(key, 2e-4)))
                group["betas"] = (beta1, 0.999)

    def step(self) -> Mapping[str, float]:
        bce = nn.functional.binary_cross_entropy_with_logits
        ones = torch.ones(self.batch_size, 1, device=self.device)
        zeros = torch.zeros(self.batch_size, 1, device=self.device)
        for _ in range(self.iters_per_step):
            real = self.x[torch.randint(len(self.x), (self.batch_size,), generator=self.rng).to(self.device)]
            noise = torch.randn(self.batch_size, self.z_dim, generator=self.rng).to(self.device)
            fake = self.generator_net(noise)
            d_loss = bce(self.discriminator(real), ones) + bce(self.discriminator(fake.detach()), zeros)
            self.d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.d_opt.step()
            g_loss = bce(self.discriminator(fake), ones)  # non-saturating generator loss
            self.g_opt.zero_grad(set_to_none=True)
            g_loss.backward()
            self.g_opt.step()
        return {**self.evaluate(), "d_loss": float(d_loss.detach()), "g_loss": float(g_loss.detach())}

    @torch.no_grad()
    def samples(self, n: int | None = None) -> torch.Tensor:
        """Generated digits (on CPU) from the fixed evaluation noise."""
        noise = self.eval_noise if n is None else self.eval_noise[:n]
        return self.generator_net(noise).cpu()

    def evaluate(self) -> dict[str, float]:
        images = self.samples()
        return {"inception_score": inception_score(images), "fid": frechet_distance(images)}

    def save(self, path: str) -> None:
        buffer = io.BytesIO()
        torch.save({"g": self.generator_net.state_dict(), "d": self.discriminator.state_dict(),
                    "g_opt": self.g_opt.state_dict(), "d_opt": self.d_opt.state_dict()}, buffer)
        with open(path, "wb") as handle:
            handle.write(buffer.getvalue())

    def load(self, path: str) -> None:
        state = torch.load(path, weights_only=True, map_location=self.device)  # saved on a GPU: loads anywhere
        self.generator_net.load_state_dict(state["g"])
        self.discriminator.load_state_dict(state["d"])
        self.g_opt.load_state_dict(state["g_opt"])
        self.d_opt.load_state_dict(state["d_opt"])
        self.set_hparams(self.hparams)  # the donor's optimizer state carries its lr/betas: keep ours


def save_grid(images: torch.Tensor, path: str, columns: int = 10) -> str:
    """A PNG grid of 8x8 digits (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.6, rows * 0.6))
    for ax, image in zip(np.ravel(axes), list(images) + [None] * (rows * columns - len(images)), strict=True):
        ax.axis("off")
        if image is not None:
            ax.imshow(image.reshape(8, 8).numpy(), cmap="gray_r", vmin=0, vmax=1)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


if __name__ == "__main__":
    config = pbtune.load_config(os.path.join(os.path.dirname(__file__), "gan_small.yaml"))
    result = pbtune.run(config=config)
    best = DigitsGAN(**config.trainable_args)
    best.setup(result.best.hparams)
    best.load(str(result.checkpoint_path))
    print(f"best member {result.best.member_id}: {best.evaluate()} with {dict(result.best.hparams)}")
    print("samples:", save_grid(best.samples(50), "gan-samples.png"))
