"""``cache=dual`` (Fast-dLLM): as ``prefix``, but the suffix's keys and values are kept too, so a cached
step recomputes only the block (one shape in every block: no width buckets needed for graph reuse)."""

from __future__ import annotations

from l2pd_eval.caches.prefix import PrefixCache
from l2pd_eval.caches.registry import register


@register
class DualCache(PrefixCache):
    name = "dual"
    width_buckets = False
    recompute_suffix = False
