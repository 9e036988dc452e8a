"""Shared fixtures: a tiny randomly initialised open_clip model (a standard config, the real CLIP tokenizer)."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch

from pipeline.text_tower import TextTower

TINY_MODEL = "test-tiny-vit"
open_clip.add_model_config(Path(__file__).parent / "model_configs")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # Tiny matmuls: intra-op threads only contend on a loaded 2-core machine (CoOp tests ran ~100x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_clip() -> torch.nn.Module:
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_MODEL)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_tower(tiny_clip: torch.nn.Module) -> TextTower:
    return TextTower(tiny_clip, open_clip.get_tokenizer(TINY_MODEL))
