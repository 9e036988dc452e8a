"""Fine-tuning methods on cached features, behind one interface (`Adapter`), built by name."""

from __future__ import annotations

from pipeline.adapters.base import Adapter, ClassSet, FitResult, TrainingDiverged
from pipeline.adapters.clip_adapter import ClipAdapter
from pipeline.adapters.coop import CoOp
from pipeline.adapters.gda import Gda
from pipeline.adapters.kgcoop import KgCoOp
from pipeline.adapters.taskres import TaskRes
from pipeline.adapters.tip_adapter_f import TipAdapterF
from pipeline.adapters.zeroshot import ZeroShot
from pipeline.params.finetune import FinetuneParams, Method, ship_method

__all__ = [
    "Adapter",
    "ClassSet",
    "ClipAdapter",
    "CoOp",
    "FitResult",
    "Gda",
    "KgCoOp",
    "TaskRes",
    "TipAdapterF",
    "TrainingDiverged",
    "ZeroShot",
    "build_adapter",
]


def build_adapter(method: Method | str, params: FinetuneParams) -> Adapter:
    """A fresh, unfitted adapter. `coop_ship` has its own section (SHIP's recipe); the other *_ship methods use
    their base method's recipe plus synthetic features (no reference code exists for them)."""
    method = ship_method(method)  # an oracle row runs its *_ship method on other features
    base, ship = method.removesuffix("_ship"), method.endswith("_ship")
    if method == "zeroshot":
        return ZeroShot()
    if method == "coop":
        return CoOp(params.coop)
    if method == "coop_ship":
        return CoOp(params.coop_ship, use_synthetic=True)
    if base == "clip_adapter":
        return ClipAdapter(params.clip_adapter, use_synthetic=ship)
    if base == "tip_adapter_f":
        return TipAdapterF(params.tip_adapter_f, use_synthetic=ship)
    if base == "gda":
        return Gda(params.gda, use_synthetic=ship)
    if base == "kgcoop":
        return KgCoOp(params.kgcoop, use_synthetic=ship)
    if base == "taskres":
        return TaskRes(params.taskres, use_synthetic=ship)
    raise ValueError(f"unknown fine-tuning method {method!r}")
