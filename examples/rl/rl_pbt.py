"""PBT for reinforcement learning (the paper's main domain): advantage actor-critic on gymnasium.

A synchronous A2C agent (``num_envs`` environments, ``rollout``-step returns bootstrapped by
the critic) with the learning rate, entropy cost and discount tuned by PBT. The score is the
mean episodic return of the last ``window`` finished training episodes (as in the paper).

    pbtune run examples/rl/cartpole_small.yaml        # CartPole-v1, seconds
    pbtune run examples/rl/cartpole.yaml              # CartPole-v1, the comparison config
    pbtune run examples/rl/lunarlander.yaml           # LunarLander-v3: pip install "gymnasium[box2d]"
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

import pbtune


def make_env(name: str, seed: int) -> Any:
    try:
        import gymnasium as gym
    except ImportError as exc:  # optional dependency of the example
        raise ImportError("this example needs gymnasium: pip install gymnasium") from exc
    try:
        env = gym.make(name)
    except Exception as exc:  # gymnasium raises DependencyNotInstalled for box2d envs
        if "box2d" in str(exc).lower() or "Box2D" in str(exc):
            raise ImportError(f"{name} needs Box2D: pip install \"gymnasium[box2d]\"") from exc
        raise
    env.reset(seed=seed)
    env.action_space.seed(seed)
    return env


def member_seed(seed: int, hparams: Mapping[str, Any]) -> int:
    """Reproducible per-member seed from the run seed and the member's first hyperparameters."""
    text = json.dumps([seed, sorted((k, repr(v)) for k, v in hparams.items())])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % 2**30


class ActorCritic(nn.Module):
    def __init__(self, obs_dim: int, actions: int, hidden: int = 64) -> None:
        super().__init__()
        self.actor = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                   nn.Linear(hidden, actions))
        self.critic = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                    nn.Linear(hidden, 1))

    def forward(self, obs: torch.Tensor) -> tuple[torch.distributions.Categorical, torch.Tensor]:
        return torch.distributions.Categorical(logits=self.actor(obs)), self.critic(obs).squeeze(-1)


class A2C(pbtune.Trainable):
    """One PBT step = ``updates_per_step`` actor-critic updates of ``num_envs`` x ``rollout`` env steps.

    ``device``: ``auto`` (CUDA when torch sees a GPU), ``cpu`` or ``cuda``. The environments step
    on CPU and the policy is small: ``cpu`` is often the faster choice here.
    """

    def setup(self, hparams: Mapping[str, Any]) -> None:
        torch.set_num_threads(1)
        a = self.args
        device = a.get("device", "auto")
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        self.env_name = str(a.get("env", "CartPole-v1"))
        self.num_envs = int(a.get("num_envs", 8))
        self.rollout = int(a.get("rollout", 16))
        self.updates_per_step = int(a.get("updates_per_step", 20))
        self.value_cost = float(a.get("value_cost", 0.5))
        self.max_grad_norm = float(a.get("max_grad_norm", 0.5))
        # The runner's per-member seed (self.seed; new after an exploit, so a copy draws other
        # data than its donor); standalone, one from the run seed and the hparams.
        seed = self.seed % 2**31 if self.seed is not None else member_seed(int(a.get("seed", 0)), hparams)
        torch.manual_seed(seed)
        self.envs = [make_env(self.env_name, seed + i) for i in range(self.num_envs)]
        self.obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(self.envs)]).astype(np.float32)
        self.running = np.zeros(self.num_envs)
        space = self.envs[0].observation_space
        self.model = ActorCritic(int(np.prod(space.shape)), int(self.envs[0].action_space.n),
                                 int(a.get("hidden", 64))).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.returns: deque[float] = deque(maxlen=int(a.get("window", 10)))
        self.env_steps = 0
        self.set_hparams(hparams)

    def set_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.hparams = dict(hparams)
        for group in self.optimizer.param_groups:
            group["lr"] = float(hparams.get("lr", self.args.get("lr", 1e-3)))
        self.entropy_cost = float(hparams.get("entropy_cost", self.args.get("entropy_cost", 0.01)))
        self.discount = float(hparams.get("discount", self.args.get("discount", 0.99)))

    def _update(self) -> None:
        obs_buf, act_buf, rew_buf, done_buf = [], [], [], []
        for _ in range(self.rollout):
            obs = torch.from_numpy(self.obs).to(self.device)
            with torch.no_grad():
                dist, _ = self.model(obs)
                sampled = dist.sample()
                actions = sampled.cpu().numpy()
            rewards = np.zeros(self.num_envs, dtype=np.float32)
            dones = np.zeros(self.num_envs, dtype=np.float32)
            next_obs = np.empty_like(self.obs)
            for i, env in enumerate(self.envs):
                o, r, terminated, truncated, _ = env.step(int(actions[i]))
                self.running[i] += r
                rewards[i] = r
                if terminated or truncated:
                    self.returns.append(float(self.running[i]))
                    self.running[i] = 0.0
                    if truncated and not terminated:  # time limit: bootstrap from the state it stopped in
                        with torch.no_grad():
                            last = torch.as_tensor(o, dtype=torch.float32, device=self.device)
                            rewards[i] += self.discount * float(self.model(last)[1])
                    dones[i] = 1.0
                    o, _ = env.reset()
                next_obs[i] = o
            obs_buf.append(obs)
            act_buf.append(sampled)
            rew_buf.append(rewards)
            done_buf.append(dones)
            self.obs = next_obs.astype(np.float32)
        self.env_steps += self.rollout * self.num_envs
        with torch.no_grad():
            ret = self.model(torch.from_numpy(self.obs).to(self.device))[1].cpu().numpy()
        targets = np.zeros((self.rollout, self.num_envs), dtype=np.float32)
        for t in reversed(range(self.rollout)):
            ret = rew_buf[t] + self.discount * ret * (1.0 - done_buf[t])
            targets[t] = ret
        dist, values = self.model(torch.cat(obs_buf))
        target = torch.from_numpy(targets.reshape(-1)).to(self.device)
        advantage = target - values
        policy_loss = -(dist.log_prob(torch.cat(act_buf)) * advantage.detach()).mean()
        loss = policy_loss + self.value_cost * advantage.pow(2).mean() - self.entropy_cost * dist.entropy().mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()

    def step(self) -> Mapping[str, float]:
        for _ in range(self.updates_per_step):
            self._update()
        score = float(np.mean(self.returns)) if self.returns else float(np.mean(self.running))
        return {"episode_return": score, "env_steps": float(self.env_steps)}

    def evaluate(self, episodes: int = 10) -> dict[str, float]:
        """Mean return of greedy (argmax) episodes on fresh environments (for examples/compare.py)."""
        env = make_env(self.env_name, 10_000)
        totals = []
        for episode in range(episodes):
            obs, _ = env.reset(seed=10_000 + episode)
            total, done = 0.0, False
            while not done:
                with torch.no_grad():
                    state = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
                    action = int(self.model(state)[0].logits.argmax())
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                done = terminated or truncated
            totals.append(total)
        return {"greedy_return": float(np.mean(totals))}

    def save(self, path: str) -> None:
        buffer = io.BytesIO()
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "returns": torch.tensor(list(self.returns), dtype=torch.float64),
                    "env_steps": self.env_steps}, buffer)
        with open(path, "wb") as handle:
            handle.write(buffer.getvalue())

    def load(self, path: str) -> None:
        # tensors and plain values only; a checkpoint saved on a GPU loads on our device
        state = torch.load(path, weights_only=True, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.set_hparams(self.hparams)  # the optimizer state carries the saver's lr; ours wins
        # The donor's recent returns describe the weights just loaded; episodes in flight restart.
        self.returns.clear()
        self.returns.extend(float(r) for r in state["returns"])
        self.env_steps = int(state["env_steps"])
        self.running[:] = 0.0
        self.obs = np.stack([env.reset()[0] for env in self.envs]).astype(np.float32)


if __name__ == "__main__":
    config = pbtune.load_config(os.path.join(os.path.dirname(__file__), "cartpole_small.yaml"))
    result = pbtune.run(config=config)
    print(f"best member {result.best.member_id}: mean episodic return {result.best.score:.1f} "
          f"with {dict(result.best.hparams)}")
