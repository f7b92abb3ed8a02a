"""Dumps, for one trained checkpoint, the PSM and memory-prior maps that the fusion comparison
(compare.py) needs: the test images' maps and the training images' leave-one-image-out prior.
The prior is fitted exactly as training fits it (adps.engine.prior.fit_prior, memory 4096).

    python benchmarks/prior_fusion/dump.py MODEL.pt DATA CATEGORY|- OUT.npz [SPLIT_FILE]

With the model's own memory (``prior == "memory"``, the default recipe's) the bank is kept as
trained; otherwise a 4096-row memory is fitted. OUT.npz also holds the prior's statistics and
the late fusion's settings, so the fused map can be rebuilt from the two maps.
"""

import dataclasses
import sys

import numpy as np
import torch
import torch.nn.functional as F

from adps.data.cache import load_tensor_stack
from adps.data.spec import DataSpec
from adps.engine.checkpoint import Checkpoint
from adps.engine.prior import fit_prior
from adps.models.adps import ADPS
from adps.models.memory import embed

model_path, data, out = sys.argv[1], sys.argv[2], sys.argv[4]
category = None if sys.argv[3] in ("", "-") else sys.argv[3]
split_file = sys.argv[5] if len(sys.argv) > 5 else None
ckpt = Checkpoint.load(model_path)
own_memory = ckpt.model_config.prior == "memory"
config = dataclasses.replace(ckpt.model_config, prior="memory", memory_size=4096)
model = ADPS(config, pretrained=False)
model.load_state_dict(ckpt.state, strict=own_memory)  # else the memory is fitted below
size = config.size
# image-level sets (screw) have no masks: their test images count as unmasked
spec = DataSpec(data, category=category, split_file=split_file, masks_optional=True)
train, _, _ = load_tensor_stack(spec.open("train", config.image_size), progress=False)
test_set = spec.open("test", config.image_size)
test, masks, labels = load_tensor_stack(test_set, progress=False)
if not own_memory:
    fit_prior(model, train)
model.eval()


@torch.no_grad()
def maps(images: torch.Tensor, leave_own_out: bool):
    psm, prior = [], []
    for i in range(0, len(images), 8):
        x = images[i : i + 8].float().div(255).contiguous(memory_format=torch.channels_last)
        p, teacher = model.psm_map(x)
        groups = torch.arange(i, i + len(x)) if leave_own_out else None
        psm.append(p)
        prior.append(
            F.interpolate(
                model.memory.distances(embed(teacher), model.config.memory_neighbors, groups),
                size=size,
                mode="bilinear",
                align_corners=False,
            )
        )
    return torch.cat(psm)[:, 0].numpy(), torch.cat(prior)[:, 0].numpy()


trP, trQ = maps(train, leave_own_out=True)
teP, teQ = maps(test, leave_own_out=False)
np.savez_compressed(
    out,
    trP=trP,
    trQ=trQ,
    teP=teP,
    teQ=teQ,
    masks=masks[:, 0].numpy(),
    labels=labels.numpy(),
    has_mask=np.array([r.has_mask for r in test_set.records]),
    stats=model.memory.stats.numpy(),
    psm_boost=config.psm_boost,
    prior_exponent=config.prior_exponent,
    names=np.array([str(r.image) for r in test_set.records]),
)
