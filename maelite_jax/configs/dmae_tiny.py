"""D-MAE: MAE pre-training of ViT-Tiny distilled from a frozen teacher (MAE-Lite's D-MAE recipe).

Default: mae_tiny's recipe (ImageNet-1k, 400 epochs, batch 4096, ...) plus attention
distillation from an MAE-Base teacher (vit_base_patch16, the official 1600-epoch weights), last
layer <-> last layer (12 <-> 12), alpha 1, with the 1x1 head adapter. The teacher must be a
checkpoint of this project; convert the PyTorch weights first:
  python scripts/import_torch.py --torch-checkpoint mae_pretrain_vit_base.pth \
      --model vit_base_patch16 --out workdirs/mae_base_teacher
  python scripts/pretrain.py --config configs/dmae_tiny.py --workdir runs/dmae_tiny \
      --config.teacher.init=workdirs/mae_base_teacher
Variants:
  :cpu    the built-in dataset at 32px / patch 4; the teacher is the MAE-Tiny encoder of the MAE
          CPU run, so run `make pretrain` (workdir runs/mae_tiny_cpu) first, then
          python scripts/pretrain.py --config configs/dmae_tiny.py:cpu --workdir runs/dmae_tiny_cpu
  :tiny   a 2-block toy for tests (teacher.init must be given)
D2-MAE (an extra logits-only student block, the decoder reading after block 8):
--config.distill.d2=True.
"""

import ml_collections

from maelite_jax.configs import mae_tiny


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = mae_tiny.get_config(arg)  # validates the variant name (cpu, tiny)
  variant = (arg or "").strip()
  config.unlock()
  config.objective = "dmae"
  config.teacher = ml_collections.ConfigDict(dict(
      init="",                  # checkpoint (workdir or step dir) holding the teacher's params
      name="vit_base_patch16",  # registry ViT the checkpoint must hold ('' = whatever it holds)
  ))
  config.distill = ml_collections.ConfigDict(dict(
      # Attention-logit distillation: pairs zip(student, teacher); 1-based blocks, -1 = last.
      attn_student_layers=(-1,),
      attn_teacher_layers=(-1,),
      attn_alpha=1.0,
      attn_adapter=True,        # 1x1 conv over heads; on even when head counts match
      # Hidden-state distillation (off): representation i = block i's norm1 output, i = depth
      # the final norm output (0..depth, -1 = depth); Linear(student dim -> teacher dim).
      hidden_student_layers=(),
      hidden_teacher_layers=(),
      hidden_alpha=1.0,
      hidden_adapter=True,
      # D2-MAE: an extra student block (attention layer depth + 1, what -1 then names) only for
      # distillation; the pixel decoder reads the final norm applied after d2_decode_layer blocks.
      d2=False,
      d2_decode_layer=8,
  ))
  if variant == "cpu":
    config.teacher.init = "runs/mae_tiny_cpu"
    config.teacher.name = "vit_tiny_patch16"
  if variant == "tiny":
    config.teacher.name = ""
    config.distill.d2_decode_layer = 1
  config.lock()
  return config
