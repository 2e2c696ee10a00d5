"""Expert-Specialized Fine-Tuning (ESFT; Wang et al., 2024, arXiv 2407.01906).

Score each routed expert's relevance to a task, keep per layer the experts that
cover a share p of the routing, and train only those:

    from moe_jax import esft, trainable
    scores = esft.score_experts(model, batches, n_tokens=131072)
    expert_cfg = esft.select_experts(scores.token, top_p=0.2)
    spec = trainable.TrainableSpec.from_expert_config(expert_cfg, model.config)

What trains, and the expert-config file, live in `moe_jax.trainable`; this
package scores and selects experts, draws routing reports and saves adapters.
`python -m moe_jax.esft select --routing-logs DIR --score token --top-p 0.2 --out cfg.json`
reproduces the official selection from DeepSeek's routing-log files.
"""

from moe_jax.esft.adapter import load_adapter, save_adapter
from moe_jax.esft.report import heatmap, overlap
from moe_jax.esft.scoring import score_experts
from moe_jax.esft.selection import ExpertScores, read_routing_logs, select_experts

__all__ = [
    "ExpertScores", "heatmap", "load_adapter", "overlap", "read_routing_logs", "save_adapter",
    "score_experts", "select_experts",
]
