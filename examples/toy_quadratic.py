"""The toy example of the PBT paper (Jaderberg et al. 2017, Figure 2), on pbtune's Member API.

We want to maximise Q(theta) = 1.2 - (theta0^2 + theta1^2), but each member only sees the
surrogate Qhat(theta | h) = 1.2 - (h0 * theta0^2 + h1 * theta1^2) and does gradient ascent on it.
Both members start at theta = (0.9, 0.9), with h = (1, 0) and (0, 1): alone, each can only
shrink one coordinate, so neither can reach Q = 1.2. Every 4 steps a member is ready:

* PBT: the worse member copies the better's theta (exploit), then perturbs its h by x0.8/x1.2
  (explore; h lives in [0, 2] and a zero moves by +-0.2);
* explore only: each member perturbs its h, never copies;
* exploit only: the worse member copies theta, never perturbs;
* grid search: h stays fixed.

As in the paper's figure, exploit copies the weights theta only (``copy_hparams=False``): each
member keeps its own h, which is what lets exploit alone zig-zag towards the optimum. The score
used for exploit is the true Q (the "evaluation"); training only sees Qhat.
Run ``python examples/toy_quadratic.py`` to print the best Q of each method over several seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

import pbtune

METHODS = ("pbt", "explore_only", "exploit_only", "grid")
START = (0.9, 0.9)


def true_q(theta: list[float]) -> float:
    return 1.2 - (theta[0] ** 2 + theta[1] ** 2)


def ascent_step(theta: list[float], h: dict[str, float], lr: float) -> list[float]:
    # gradient of Qhat = 1.2 - (h0 t0^2 + h1 t1^2) is (-2 h0 t0, -2 h1 t1)
    return [theta[0] - lr * 2 * h["h0"] * theta[0], theta[1] - lr * 2 * h["h1"] * theta[1]]


def simulate(method: str, seed: int, workdir: str, *, steps: int = 40, interval: int = 4, lr: float = 0.05,
             explore: str = "perturb", h_max: float = 2.0) -> float:
    """Best true Q reached by either member; the two members step alternately (asynchronous PBT)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    config = pbtune.RunConfig(
        name=f"toy-{method}-{seed}", population=2, budget=steps, seed=seed,
        space={"h0": pbtune.Float(0.0, h_max), "h1": pbtune.Float(0.0, h_max)},
        ready={"interval": interval}, explore=explore,
        exploit={"name": "truncation", "quantile": 0.5, "copy_hparams": False},
        storage=f"sqlite:///{workdir}/toy.db", checkpoints=os.path.join(workdir, "checkpoints"),
    )
    population = pbtune.Population(config, initial=[{"h0": 1.0, "h1": 0.0}, {"h0": 0.0, "h1": 1.0}])
    members = [population.member(i) for i in range(2)]
    thetas = [list(START), list(START)]
    best = true_q(thetas[0])
    for step in range(1, steps + 1):
        for i, member in enumerate(members):
            thetas[i] = ascent_step(thetas[i], member.hparams, lr)
            q = true_q(thetas[i])
            best = max(best, q)
            if step % interval:
                member.report(step, q)
                continue
            path = os.path.join(workdir, f"theta-{i}.json")
            with open(path, "w") as handle:
                json.dump(thetas[i], handle)
            member.save(path, q, step=step)
            if method == "explore_only":
                member.explore()
            elif method in ("pbt", "exploit_only") and member.should_exploit() and member.exploit():
                with open(member.parameters_path() or "") as handle:
                    thetas[i] = json.load(handle)
                if method == "pbt":
                    member.explore()
    return best


def compare(seeds: list[int], **kwargs: float) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {method: [] for method in METHODS}
    for method in METHODS:
        for seed in seeds:
            with tempfile.TemporaryDirectory() as workdir:
                results[method].append(simulate(method, seed, workdir, **kwargs))  # type: ignore[arg-type]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    results = compare(list(range(args.seeds)), steps=args.steps)
    print(f"best Q reached (max possible 1.2), {args.seeds} seeds, {args.steps} steps, ready every 4 steps")
    print(f"{'method':<14}{'mean':>9}{'min':>9}{'max':>9}")
    for method, values in results.items():
        print(f"{method:<14}{statistics.mean(values):>9.4f}{min(values):>9.4f}{max(values):>9.4f}")
    print(json.dumps({m: statistics.mean(v) for m, v in results.items()}))


if __name__ == "__main__":
    main()
