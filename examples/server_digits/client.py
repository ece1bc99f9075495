"""One training script of the server example: a PyTorch MLP on scikit-learn's digits data.

It is a member of the population served by ``pbtune server``; start as many as the
population has members, on any machine that reaches the server::

    python client.py --url http://127.0.0.1:8765 --key-file key.txt --epochs 30

Each epoch: train, save a checkpoint, report validation accuracy; when the server says so,
load a better member's weights and hyperparameters and perturb them (PBT's exploit/explore).
Nothing here is pbtune-specific except the five PBTClient calls.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from torch import nn

from pbtune.server import PBTClient

HERE_EXAMPLES = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE_EXAMPLES)  # the data and model of examples/digits_mlp.py
from digits_mlp import digits_split, make_mlp  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def set_hparams(optimizer: torch.optim.Optimizer, hparams: dict[str, float]) -> None:
    for group in optimizer.param_groups:
        group.update(lr=hparams["lr"], momentum=hparams["momentum"], weight_decay=hparams["weight_decay"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8765")
    parser.add_argument("--key-file", required=True)
    parser.add_argument("--space", default=os.path.join(HERE, "space.csv"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batches", type=int, default=10, help="minibatches of 64 per epoch")
    parser.add_argument("--workdir", default=".", help="where this client keeps its checkpoint and identity")
    parser.add_argument("--name", default="client", help="file prefix of this client in --workdir")
    args = parser.parse_args()
    torch.set_num_threads(1)  # several clients share this machine's cores
    with open(args.key_file, encoding="utf-8") as handle:
        key = handle.read().strip()

    # joins a free member; after a crash, the identity file brings it back as the same member
    client = PBTClient(args.url, None, key, args.space,
                       identity_file=os.path.join(args.workdir, f"{args.name}.member.json"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # a GPU when this client sees one
    x, y, x_val, y_val = (t.to(device) for t in digits_split())
    torch.manual_seed(client.member_id)
    model = make_mlp().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    if client.parameters_path() is not None:  # a restarted client continues from its last save
        model.load_state_dict(torch.load(client.parameters_path(), map_location=device, weights_only=True))
    set_hparams(optimizer, client.hparams)
    loss_fn = nn.CrossEntropyLoss()
    checkpoint = os.path.join(args.workdir, f"{args.name}.pt")
    generator = torch.Generator().manual_seed(1000 + client.member_id)
    for _epoch in range(client.step + 1, args.epochs + 1):
        model.train()
        for _ in range(args.batches):
            index = torch.randint(len(x), (64,), generator=generator).to(device)
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x[index]), y[index]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracy = float((model(x_val).argmax(dim=1) == y_val).float().mean())
        torch.save(model.state_dict(), checkpoint)
        client.save(checkpoint, accuracy)
        if client.should_exploit():
            donor = client.exploit()
            if donor is not None:
                model.load_state_dict(torch.load(client.parameters_path(), map_location=device, weights_only=True))
                client.explore()
                set_hparams(optimizer, client.hparams)
    client.finish()
    print(json.dumps({"member": client.member_id, "accuracy": client.score, "hparams": client.hparams}))
    client.close()


if __name__ == "__main__":
    main()
