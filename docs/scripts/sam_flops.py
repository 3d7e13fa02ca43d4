"""MACs of the SAM encoders at 1024x1024, both conventions: PYTHONPATH=. python docs/scripts/sam_flops.py"""

from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT

from routevit import create_model
from routevit.flops import WEIGHT_OPS, count_macs_by_op

with torch.device("meta"):  # nothing runs: shapes only
    x = torch.zeros(1, 3, 1024, 1024)
    models = {
        "SAM ViT-B (segment_anything)": ImageEncoderViT(
            depth=12, embed_dim=768, num_heads=12, global_attn_indexes=(2, 5, 8, 11), window_size=14,
            use_rel_pos=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)),
        "blvit_sam_b_t": create_model("blvit_sam_b_t"),
        "SAM ViT-H (segment_anything)": ImageEncoderViT(
            depth=32, embed_dim=1280, num_heads=16, global_attn_indexes=(7, 15, 23, 31), window_size=14,
            use_rel_pos=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)),
        "blvit_sam_h_b": create_model("blvit_sam_h_b"),
    }
    for name, model in models.items():
        by_op = count_macs_by_op(model.eval(), x)
        weight = sum(v for k, v in by_op.items() if k in WEIGHT_OPS)
        print(f"{name:30s} weight-layers {weight / 1e9:8.1f}  all {sum(by_op.values()) / 1e9:8.1f} GMACs")
