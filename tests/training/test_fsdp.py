"""A real 2-process torch FSDP2 run over gloo on CPU saves the model a 1-process run trains.

accelerate (1.15) cannot start FSDP on CPU: with ``cpu=True`` its state becomes ``MULTI_CPU`` and the
FSDP settings are ignored (``AcceleratorState``: the FSDP branch is taken only for GPU-like device
types). So `fsdp_worker.py` shards the model with torch's ``fully_shard`` itself and the save path
runs through accelerate's own ``Accelerator.get_state_dict`` (its FSDP2 branch), our
`saved_final_model` and ``save_pretrained(state_dict=...)``; the interrupted run's sharded checkpoint
is written and read with torch.distributed.checkpoint, the calls accelerate's FSDP2 ``save_state`` /
``load_state`` make. Not covered here: accelerate's FSDP ``prepare`` and its ``save_state`` /
``load_state`` wrappers themselves, hence `openovis.training.run` end to end under FSDP.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fsdp_worker import STEPS, build, global_batch, train_step
from safetensors import safe_open

from openovis import OvisForConditionalGeneration

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("fsdp_worker.py")


def _torchrun(out: Path, mode: str) -> None:
    tests = str(Path(__file__).parents[1])
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]),
    }
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*launch, str(WORKER), str(out), mode], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _assert_same_weights(actual: dict, expected: dict, **tolerance) -> None:
    assert actual.keys() == expected.keys()
    for name, tensor in actual.items():
        assert tensor.dtype == torch.float32
        torch.testing.assert_close(tensor, expected[name], msg=name, **tolerance)


def test_two_process_fsdp2_saves_what_one_process_trains_and_resumes_exactly(tmp_path):
    _torchrun(tmp_path / "full" / "final", "full")
    model, optimizer = build()
    for step in range(STEPS):
        train_step(model, optimizer, global_batch(model.config, step), rank=0, world=1)
    full = OvisForConditionalGeneration.from_pretrained(tmp_path / "full" / "final").state_dict()
    _assert_same_weights(full, model.state_dict(), rtol=1e-5, atol=1e-7)  # summation order only
    with safe_open(tmp_path / "full" / "final" / "model.safetensors", "pt") as f:  # the official names
        assert {"vte.weight", "visual_tokenizer.head.0.weight"} <= set(f.keys())

    _torchrun(tmp_path / "cut" / "final", "interrupted")
    assert not (tmp_path / "cut" / "final").exists() and (tmp_path / "cut" / "checkpoint").is_dir()
    _torchrun(tmp_path / "cut" / "final", "resume")
    resumed = OvisForConditionalGeneration.from_pretrained(tmp_path / "cut" / "final").state_dict()
    _assert_same_weights(resumed, full, rtol=0, atol=0)
