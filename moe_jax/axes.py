"""The logical axis names: the closed vocabulary every weight and activation is named with.

Model code names each dimension by its role (`embed`, `mlp`, `exp`, ...), never
by a mesh axis; `moe_jax.sharding` maps the roles onto a device mesh. Keeping
the names apart from the mesh lets every layer name its weights without
knowing how, or whether, they will be sharded.
"""

# Weight axes.
VOCAB = "vocab"  # vocabulary rows of the embedding and output head
EMBED = "embed"  # the model width D
MLP = "mlp"  # hidden width F of a dense or expert SwiGLU
HEADS = "heads"  # attention heads N
KV = "kv"  # per-head width H
EXP = "exp"  # routed experts E
Q_LORA = "q_lora"  # MLA query compression rank
KV_LORA = "kv_lora"  # MLA key/value compression rank (+ the shared rope key)
NORM = "norm"  # norm scales (RMSNorm, LayerNorm) and LayerNorm biases
# Rows of a small learned lookup table (BERT's positions and token types). No sharding rule
# names it, so it is replicated: the tables are small, and every device reads every row.
TABLE = "table"
# Activation axes.
BATCH = "batch"
LENGTH = "length"

AXES = (VOCAB, EMBED, MLP, HEADS, KV, EXP, Q_LORA, KV_LORA, NORM, TABLE, BATCH, LENGTH)
