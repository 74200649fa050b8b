"""SparseDoctor's contrastive LoRA-MoE: several LoRA experts per projection, a top-k router per
decoder layer supervised by the medical question categories, an expert memory queue of past
routed representations (negatives for the contrastive term) and a load-balancing term.

Layout: queue.py (the bounded per-expert FIFO), router.py (cosine top-k gating), layers.py
(a base Linear plus N gated LoRA experts), losses.py (contrastive and balance terms),
model.py (attaching experts and routers to a Hugging Face causal LM), export.py (the files,
docs/adapters.md), cli.py (`medrt-train moe`)."""
from .export import load_moe, save_moe
from .model import MoeConfig, MoeModel
from .queue import ExpertMemoryQueue
from .router import Routing, TopKRouter

__all__ = ["ExpertMemoryQueue", "MoeConfig", "MoeModel", "Routing", "TopKRouter", "load_moe",
           "save_moe"]
