"""Write a bring-your-own example: a TorchScript DeepFM, the same model as ONNX, its
feature spec and a Parquet data set with a planted signal (nothing here is real data).

    python examples/bring-your-own/make_model_and_data.py --out /tmp/byom

writes ``deepfm.pt`` (TorchScript), ``deepfm.onnx``, ``spec.yaml`` and
``interactions.parquet`` into ``--out``, and prints the model's own test AUC, which the
FP32 variant's AUC in the build report should match. The model is what a team would
bring: inputs named ``dense_feats`` and ``ids``, taken in that order (not recserve's
defaults), its own column names, a string-valued category (hashed: ``oov: hash``),
user ids the model never saw in the test part (``oov: id``), missing prices
(``fill: 0``). Needs the builder's packages (``pip install 'recserve[build]'``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

N_USERS, N_ITEMS, N_CATEGORIES = 800, 400, 30
CATEGORY_VOCAB = 64  # hashed category ids
DIM = 8

SPEC: dict[str, Any] = {
    "sparseInput": "ids",
    "denseInput": "dense_feats",
    "label": "clicked",
    "sparse": [
        # one extra row each: the model's out-of-vocabulary row (the last one)
        {
            "name": "user",
            "column": "user_id",
            "vocabSize": N_USERS + 1,
            "side": "user",
            "oov": "id",
        },
        {
            "name": "item",
            "column": "item_id",
            "vocabSize": N_ITEMS + 1,
            "side": "item",
            "oov": "id",
        },
        {"name": "category", "vocabSize": CATEGORY_VOCAB, "side": "item", "oov": "hash"},
    ],
    "dense": [
        {"name": "price", "side": "item", "fill": 0.0},
        {"name": "hour", "width": 2, "side": "user", "columns": ["hour_sin", "hour_cos"]},
    ],
}


def make_data(rows: int, seed: int) -> Any:
    """Interactions whose click probability follows planted user/item factors."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    user_vec = rng.normal(0, 0.7, (N_USERS + 50, 4))  # 50 users arrive late (unseen)
    item_vec = rng.normal(0, 0.7, (N_ITEMS, 4))
    item_cat = rng.integers(0, N_CATEGORIES, N_ITEMS)
    cat_bias = rng.normal(0, 0.8, N_CATEGORIES)
    user_bias = rng.normal(0, 0.8, N_USERS + 50)
    item_bias = rng.normal(0, 0.8, N_ITEMS)
    price = rng.lognormal(2.5, 0.6, N_ITEMS)
    ts = np.sort(rng.integers(1_700_000_000, 1_700_000_000 + 90 * 86400, rows))
    late = ts > np.quantile(ts, 0.85)
    users = np.where(
        late & (rng.random(rows) < 0.1),
        rng.integers(N_USERS, N_USERS + 50, rows),
        rng.integers(0, N_USERS, rows),
    )
    items = rng.integers(0, N_ITEMS, rows)
    hour = (ts // 3600) % 24
    angle = 2 * np.pi * hour / 24
    logit = (
        (user_vec[users] * item_vec[items]).sum(1)
        + user_bias[users]
        + item_bias[items]
        + cat_bias[item_cat[items]]
        - 0.6 * (np.log(price[items]) - 2.5)
        + 0.5 * np.sin(angle)
        - 0.3
    )
    clicked = rng.random(rows) < 1 / (1 + np.exp(-logit))
    item_price = price[items].astype(np.float32)
    item_price[rng.random(rows) < 0.01] = np.nan  # missing prices: `fill: 0` in the spec
    return pd.DataFrame(
        {
            "user_id": users.astype(np.int64),
            "item_id": items.astype(np.int64),
            "category": [f"cat-{c:02d}" for c in item_cat[items]],
            "price": item_price,
            "hour_sin": np.sin(angle).astype(np.float32),
            "hour_cos": np.cos(angle).astype(np.float32),
            "ts": ts,
            "clicked": clicked.astype(np.int64),
        }
    )


def deepfm() -> Any:
    """A small DeepFM (FM + MLP over field embeddings) taking (dense_feats, ids)."""
    import torch
    from torch import nn

    class DeepFM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            vocab = [f["vocabSize"] for f in SPEC["sparse"]]
            self.user = nn.Embedding(vocab[0], DIM)
            self.item = nn.Embedding(vocab[1], DIM)
            self.category = nn.Embedding(vocab[2], DIM)
            self.first_order = nn.Linear(3, 1)
            self.deep = nn.Sequential(
                nn.Linear(3 * DIM + 3, 64),
                nn.ReLU(),
                nn.Linear(64, 32),
                nn.ReLU(),
                nn.Linear(32, 1),
            )

        def forward(self, dense_feats: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            # preprocessing the model needs lives in forward(): what is served is the file
            dense = torch.cat(
                [torch.log1p(dense_feats[:, :1].clamp(min=0.0)), dense_feats[:, 1:]], 1
            )
            fields = torch.stack(
                [self.user(ids[:, 0]), self.item(ids[:, 1]), self.category(ids[:, 2])], 1
            )
            summed = fields.sum(1)
            fm = 0.5 * (summed * summed - (fields * fields).sum(1)).sum(1, keepdim=True)
            deep = self.deep(torch.cat([fields.flatten(1), dense], 1))
            return torch.sigmoid(self.first_order(dense) + fm + deep).squeeze(1)

    return DeepFM()


def to_inputs(df: Any) -> tuple[Any, Any]:
    """The model's (dense_feats, ids) for a frame, mapped as the spec says."""
    import pandas as pd
    import torch

    users = df["user_id"].to_numpy()
    users = np.where(users >= N_USERS, N_USERS, users)  # oov: id (the last row)
    items = df["item_id"].to_numpy()
    hashed = pd.util.hash_array(df["category"].to_numpy(dtype=object), categorize=False)
    category = ((hashed >> np.uint64(1)).astype(np.int64)) % CATEGORY_VOCAB  # oov: hash
    ids = torch.from_numpy(np.stack([users, items, category], 1).astype(np.int64))
    price = df["price"].fillna(0.0).to_numpy(np.float32)
    dense = np.stack([price, df["hour_sin"].to_numpy(), df["hour_cos"].to_numpy()], 1)
    return torch.from_numpy(dense.astype(np.float32)), ids


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Write the example files; returns what was written and the model's test AUC."""
    import torch
    import yaml
    from sklearn.metrics import roc_auc_score

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder to write into")
    p.add_argument("--rows", type=int, default=60_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout-bp", type=int, default=2000, help="the time split's test share")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    df = make_data(args.rows, args.seed)
    cut = len(df) - -(-len(df) * args.holdout_bp // 10_000)  # latest rows by ts: the test
    train, test = df.iloc[:cut], df.iloc[cut:]
    model = deepfm()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-5)
    dense, ids = to_inputs(train)
    label = torch.from_numpy(train["clicked"].to_numpy(np.float32))
    for _ in range(4):
        for batch in torch.randperm(len(label)).split(512):
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy(
                model(dense[batch], ids[batch]), label[batch]
            )
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        scores = model(*to_inputs(test)).numpy()
    auc = float(roc_auc_score(test["clicked"].to_numpy(), scores))
    scripted = torch.jit.script(model)
    torch.jit.save(scripted, str(out / "deepfm.pt"))
    example = to_inputs(df.head(4))
    torch.onnx.export(
        model,
        example,
        str(out / "deepfm.onnx"),
        input_names=["dense_feats", "ids"],
        output_names=["probability"],
        dynamic_axes={"dense_feats": {0: "b"}, "ids": {0: "b"}, "probability": {0: "b"}},
        opset_version=17,
        dynamo=False,
    )
    (out / "spec.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    df.to_parquet(out / "interactions.parquet", index=False)
    facts = {
        "out": str(out),
        "rows": len(df),
        "test_rows": len(test),
        "positive_rate": round(float(df["clicked"].mean()), 4),
        "model_test_auc": round(auc, 5),
    }
    print(json.dumps(facts))
    return facts


if __name__ == "__main__":
    main()
