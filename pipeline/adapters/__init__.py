"""Fine-tuning methods on cached CLIP features, behind one interface (`Adapter`), built by name."""

from __future__ import annotations

from pipeline.adapters.base import Adapter, ClassSet, FitResult
from pipeline.adapters.clip_adapter import ClipAdapter
from pipeline.adapters.coop import CoOp
from pipeline.adapters.tip_adapter_f import TipAdapterF
from pipeline.adapters.zeroshot import ZeroShot
from pipeline.params.finetune import FinetuneParams, Method

__all__ = ["Adapter", "ClassSet", "ClipAdapter", "CoOp", "FitResult", "TipAdapterF", "ZeroShot", "build_adapter"]


def build_adapter(method: Method, params: FinetuneParams) -> Adapter:
    """A fresh, unfitted adapter; `<name>_ship` is `<name>` trained with synthetic label-only-class features."""
    base, ship = method.removesuffix("_ship"), method.endswith("_ship")
    if base == "zeroshot" and not ship:
        return ZeroShot()
    if base == "coop":
        return CoOp(params.coop, use_synthetic=ship)
    if base == "clip_adapter":
        return ClipAdapter(params.clip_adapter, use_synthetic=ship)
    if base == "tip_adapter_f":
        return TipAdapterF(params.tip_adapter_f, use_synthetic=ship)
    raise ValueError(f"unknown fine-tuning method {method!r}")
