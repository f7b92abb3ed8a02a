"""Dumps, for one trained checkpoint, the PSM and memory-prior maps that the fusion comparison
(compare.py) needs: the test images' maps and the training images' leave-one-image-out prior.

    python benchmarks/prior_fusion/dump.py MODEL.pt DATA CATEGORY|"" OUT.npz
"""
import sys, torch, numpy as np
import torch.nn.functional as F
from adps.config import from_dict, to_dict, ModelConfig
from adps.data.cache import load_tensor_stack
from adps.data.spec import DataSpec
from adps.engine.checkpoint import load_checkpoint
from adps.models.adps import ADPS
from adps.models.memory import embed, greedy_coreset, nearest_distances
model_path, data, cat, out = sys.argv[1], sys.argv[2], (sys.argv[3] or None), sys.argv[4]
ckpt = load_checkpoint(model_path)
cfg = from_dict(ModelConfig, {**ckpt["model_config"], "prior": "memory", "memory_size": 4096})
m = ADPS(cfg, pretrained=False); m.load_state_dict(ckpt["model"], strict=False); m.eval()
spec = DataSpec(data, category=cat)
tr, _, _ = load_tensor_stack(spec.open("train", 256), progress=False)
te_ds = spec.open("test", 256)
te, masks, labels = load_tensor_stack(te_ds, progress=False)
def run(imgs):
    P, E = [], []
    with torch.no_grad():
        for i in range(0, len(imgs), 8):
            x = imgs[i:i+8].float().div(255).contiguous(memory_format=torch.channels_last)
            p, t = m.psm_map(x); P.append(p); E.append(embed(t))
    return torch.cat(P), torch.cat(E)
trP, trE = run(tr); teP, teE = run(te)
n, c, h, w = trE.shape
feats = trE.permute(0,2,3,1).reshape(-1, c); src = torch.arange(n).repeat_interleave(h*w)
ch = greedy_coreset(feats, min(4096, len(feats)))
bank, bsrc = feats[ch], src[ch]
loo = torch.cat([nearest_distances(feats[i:i+8192], bank, 1, query_groups=src[i:i+8192], bank_groups=bsrc) for i in range(0, len(feats), 8192)]).view(n,1,h,w)
tq = teE.permute(0,2,3,1).reshape(-1, c)
tpr = torch.cat([nearest_distances(tq[i:i+8192], bank) for i in range(0, len(tq), 8192)]).view(len(te),1,h,w)
up = lambda a: F.interpolate(a, size=(256,256), mode="bilinear", align_corners=False)
np.savez_compressed(out, trP=trP[:,0].numpy(), trQ=up(loo)[:,0].numpy(), teP=teP[:,0].numpy(), teQ=up(tpr)[:,0].numpy(),
    masks=masks[:,0].numpy(), labels=labels.numpy(), has_mask=np.array([r.has_mask for r in te_ds.records]))
