"""The model as rope_behavior sees it: host adapters (the only code that knows hook names),
the RoPE spec read from the model's own tables, the resolved model context, devices.
"""

from rope_behavior.model.adapters import HookSites, ModelAdapter, PairLayout, adapter_for
from rope_behavior.model.spec import RopeSpec

__all__ = ["HookSites", "ModelAdapter", "PairLayout", "RopeSpec", "adapter_for"]
