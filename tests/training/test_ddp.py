"""A real 2-process DDP run on CPU (gloo) takes the same steps as 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from helpers import word_tokenizer, write_corpus

pytestmark = pytest.mark.slow


def _recipe(tmp, name: str, batch_size: int, grad_accum: int):
    text = [{"path": "corpus.txt", "format": "text"}]
    stage = {
        "name": "lm",
        "data": text,
        "module_lr": {"all": 2e-3},
        "max_steps": 12,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
    }
    recipe = {
        "model": {"preset": "tiny", "tokenizer": str(tmp / "tok"), "overrides": {"vet_impl": "reference"}},
        "data_root": str(tmp),
        "output_dir": str(tmp / name),
        "report_to": [],
        "stages": [stage],
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _run(cmd):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_two_process_ddp_matches_one_process(tmp_path):
    word_tokenizer(tmp_path / "tok")
    write_corpus(tmp_path / "corpus.txt", n=100)
    train = ["-m", "openovis.cli", "train"]
    _run([sys.executable, *train, str(_recipe(tmp_path, "single", 4, 2)), "--no-progress"])
    # accelerate's launcher runs CPU jobs as one process; torchrun starts real gloo DDP workers.
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    _run([*launch, *train, str(_recipe(tmp_path, "ddp", 4, 1)), "--no-progress"])
    single = json.loads((tmp_path / "single" / "lm" / "losses.json").read_text())
    ddp = json.loads((tmp_path / "ddp" / "lm" / "losses.json").read_text())
    assert len(single) == len(ddp) == 12
    assert ddp == pytest.approx(single, rel=1e-4)
    assert single[-1] < single[0]
