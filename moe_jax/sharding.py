"""Logical axis names: the closed vocabulary every weight and activation is tagged with.

Model code names dimensions by role (`embed`, `mlp`, `exp`, ...), never by mesh
axis. `DEFAULT_RULES` maps the roles onto a mesh with axes
(data, fsdp, expert, tensor); a trainer can pass other rules without touching
the model.
"""

from __future__ import annotations

# Weight axes.
VOCAB = "vocab"  # vocabulary rows of the embedding and output head
EMBED = "embed"  # the model width D
MLP = "mlp"  # hidden width F of a dense or expert SwiGLU
HEADS = "heads"  # attention heads N
KV = "kv"  # per-head width H
EXP = "exp"  # routed experts E
Q_LORA = "q_lora"  # MLA query compression rank
KV_LORA = "kv_lora"  # MLA key/value compression rank (+ the shared rope key)
NORM = "norm"  # RMSNorm scales
# Activation axes.
BATCH = "batch"
LENGTH = "length"

AXES = (VOCAB, EMBED, MLP, HEADS, KV, EXP, Q_LORA, KV_LORA, NORM, BATCH, LENGTH)

# Mesh axes, outermost first.
MESH_AXES = ("data", "fsdp", "expert", "tensor")

# Outside the MoE layers the expert axis acts as another FSDP axis (MaxText's default).
DEFAULT_RULES = (
    (BATCH, ("data", "fsdp", "expert")),
    (LENGTH, None),
    (VOCAB, "tensor"),
    (EMBED, "fsdp"),
    (MLP, "tensor"),
    (HEADS, "tensor"),
    (KV, None),
    (EXP, "expert"),
    (Q_LORA, None),
    (KV_LORA, None),
    (NORM, None),
)
