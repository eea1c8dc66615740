"""A run killed with SIGKILL part-way and resumed takes exactly the uninterrupted run's steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import word_tokenizer, write_corpus


def _recipe(tmp: Path, out: str) -> Path:
    word_tokenizer(tmp / "tok")
    write_corpus(tmp / "corpus.txt")
    text = [{"path": "corpus.txt", "format": "text"}]
    recipe = {
        "model": {"preset": "tiny", "tokenizer": str(tmp / "tok")},
        "data_root": str(tmp),
        "output_dir": str(tmp / out),
        "report_to": [],
        "stages": [
            {"name": "a", "data": text, "module_lr": {"llm": 3e-3}, "max_steps": 6, "batch_size": 4},
            {
                "name": "b",
                "data": text,
                "module_lr": {"all": 1e-3},
                "max_steps": 40,
                "batch_size": 4,
                "save_every": 5,
                "grad_accum": 2,
            },
        ],
    }
    path = tmp / f"{out}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _train(recipe: Path, *extra: str, wait: bool = True) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "openovis.cli", "train", str(recipe), "--no-progress", *extra]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if wait:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
    return proc


def test_sigkill_then_resume_reproduces_the_uninterrupted_losses(tmp_path):
    _train(_recipe(tmp_path, "full"))
    expected = json.loads((tmp_path / "full" / "b" / "losses.json").read_text())

    recipe = _recipe(tmp_path, "killed")
    proc = _train(recipe, wait=False)
    ckpts = tmp_path / "killed" / "b" / "checkpoints"
    deadline = time.time() + 240
    while not (ckpts / "step-000015").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "b" / "stage_done.json").exists()

    _train(recipe, "--resume", "auto")
    resumed = json.loads((tmp_path / "killed" / "b" / "losses.json").read_text())
    assert len(resumed) == len(expected) == 40
    assert resumed == pytest.approx(expected, rel=1e-6, abs=1e-7)
    # The resumed run skipped the finished stage and kept its final model loadable.
    from openovis import OvisForConditionalGeneration

    OvisForConditionalGeneration.from_pretrained(tmp_path / "killed" / "b" / "final")
