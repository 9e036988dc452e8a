"""Fitted source-only methods of a cross-dataset source, saved once and scored on every target later.

The cross-dataset stages fit the non-SHIP methods on the source once per seed (`xd_source`), and each target's stage
(`xd_finetune`) restores them to score the target's test images, so a method is not refitted per target.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.adapters import Adapter, build_adapter
from pipeline.atomic_files import write_file_atomic
from pipeline.feature_store import StoreError
from pipeline.finetune import MethodResult
from pipeline.params.finetune import FinetuneParams

FITS_FORMAT = "ship-fits/1"


def save_fits(path: Path, results: Sequence[MethodResult], backbone: str, classnames: Sequence[str]) -> Path:
    payload = {
        "format": FITS_FORMAT,
        "backbone": backbone,
        "classnames": list(classnames),
        "methods": {
            r.method: {
                "state": r.export,
                "best_epoch": r.best_epoch,
                "val_acc": r.val_acc,
                "info": dict(r.info),
            }
            for r in results
        },
    }
    return write_file_atomic(path, lambda f: torch.save(payload, f))


def load_fits(path: Path, backbone: str) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StoreError(f"fitted source methods {path} are missing; run the xd_source stage") from None
    except Exception as err:
        raise StoreError(
            f"{path} is not a readable fits file ({type(err).__name__}); rerun the xd_source stage"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FITS_FORMAT:
        raise StoreError(f"{path} is not a {FITS_FORMAT} file; rerun the xd_source stage")
    if payload["backbone"] != backbone:
        raise StoreError(f"{path} was fitted on backbone {payload['backbone']!r}, not {backbone!r}; rerun xd_source")
    return payload


def restore_adapter(method: str, entry: dict[str, Any], params: FinetuneParams, device: torch.device) -> Adapter:
    adapter = build_adapter(method, params)
    adapter.restore(entry["state"], device)
    return adapter
