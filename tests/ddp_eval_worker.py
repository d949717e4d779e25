"""Run by tests/test_distributed.py under torchrun or alone: validation metrics of a checkpoint."""
import json
import sys

import torch

from amanita.checkpoint import load_for_eval
from amanita.data import DeviceLoader, FungiTasticDataset, create_transforms, make_loader
from amanita.distributed import ShardSampler, cleanup, init_distributed
from amanita.engine import predict, summarize

ckpt, val_csv, out = sys.argv[1:4]
dist = init_distributed("cpu")
model, tax, cfg, _ = load_for_eval(ckpt)
ds = FungiTasticDataset(val_csv, tax, create_transforms(cfg, train=False), input_size=cfg["input_size"])
loader = DeviceLoader(make_loader(ds, 4, 0, "cpu", ShardSampler(len(ds), dist.world_size, dist.rank)), "cpu", cfg)
preds = predict(model, loader, tax, torch.device("cpu"), decode="independent")
if dist.is_main:
    with open(out, "w") as f:
        json.dump({"n": len(preds), "indices": preds["index"].tolist(), "metrics": summarize(preds, tax),
                   "conf": preds["leaf_conf"].round(6).tolist()}, f)
cleanup()
