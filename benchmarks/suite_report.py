"""Writes the markdown report of `benchmarks/gpu_suite.sh` from the JSON its steps leave in a folder.

    python benchmarks/suite_report.py gpu_out        # -> gpu_out/report.md (also printed)

Reads ``versions.txt``, ``steps.tsv`` (step, exit code, seconds), ``vet_op.json`` (rows of
`benchmarks/vet_op.py`), ``train_*.jsonl`` (rows of `benchmarks/train_step.py`) and ``generate.jsonl``
(rows of `benchmarks/generate.py`); whatever a time-boxed step did not write is reported missing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def vet_section(out: Path) -> list[str]:
    path = out / "vet_op.json"
    if not path.exists():
        return ["*(no VET op figures: the step failed or ran out of time; see vet_op.log)*"]
    rows = json.loads(path.read_text())
    lines = [
        "| case | impl | fwd ms | × | fwd+bwd ms | × | peak MiB | × | max rel err |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ref: dict = {}
    for r in rows:
        ref = r if r["impl"] == "reference" else ref
        lines.append(
            f"| {r['case']} | {r['impl']} | {r['fwd_ms']:.2f} | {ref['fwd_ms'] / r['fwd_ms']:.2f} | "
            f"{r['fwd_bwd_ms']:.2f} | {ref['fwd_bwd_ms'] / r['fwd_bwd_ms']:.2f} | {r['fwd_bwd_peak_mib']:,.0f} | "
            f"{ref['fwd_bwd_peak_mib'] / max(r['fwd_bwd_peak_mib'], 1e-9):.2f} | {r['max_rel_err']:.1e} |"
        )
    lines.append(
        "×: reference / this (higher is better). `-even` cases: head width a multiple of 128; the "
        "others have the official odd width (65531, 131070); `chunked, no pad` runs the odd width as is."
    )
    return lines


def train_section(path: Path) -> list[str]:
    rows = _jsonl(path)
    if not rows:
        return [f"*(no figures in {path.name}: see its log)*"]
    lines = [
        f"`{rows[0]['header']}`",
        "",
        "| model | step ms | samples/s | × | tokens/s | × | peak MiB | × | first loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ref = rows[0]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['step_ms']:.1f} | {r['samples_s']:.2f} | {r['samples_s'] / ref['samples_s']:.2f} | "
            f"{r['tokens_s']:,.0f} | {r['tokens_s'] / ref['tokens_s']:.2f} | {r['peak_mib']:,.0f} | "
            f"{ref['peak_mib'] / max(r['peak_mib'], 1e-9):.2f} | {r['first_loss']:.4f} |"
        )
    lines.append(f"×: against {ref['name']} (higher is better; memory: its peak / this peak).")
    return lines


def generate_section(path: Path) -> list[str]:
    rows = _jsonl(path)
    if not rows:
        return ["*(no generation figures: see generate.log)*"]
    lines = [
        "| case | implementation | TTFT ms | × | decode tok/s | × | same tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    ref: dict[str, dict] = {}
    for r in rows:
        base = ref.setdefault(r["case"], r)
        lines.append(
            f"| {r['case']} | {r['impl']} | {r['ttft_ms']:.1f} | {base['ttft_ms'] / r['ttft_ms']:.2f} | "
            f"{r['decode_tok_s']:,.1f} | {r['decode_tok_s'] / base['decode_tok_s']:.2f} | {r['same_tokens']} |"
        )
    return lines


def report(out: Path) -> str:
    parts = ["# GPU suite", ""]
    versions = out / "versions.txt"
    parts += ["```", versions.read_text().strip() if versions.exists() else "(no versions)", "```", ""]
    steps = out / "steps.tsv"
    if steps.exists():
        parts += ["| step | exit | seconds |", "|---|---|---|"]
        parts += [f"| {' | '.join(line.split(chr(9)))} |" for line in steps.read_text().splitlines() if line]
        parts += ["(exit 124: the step hit its time box)", ""]
    parts += ["## VET op (`benchmarks/vet_op.py`)", "", *vet_section(out), ""]
    for path in sorted(out.glob("train_*.jsonl")):
        parts += [f"## Training step: {path.stem}", "", *train_section(path), ""]
    parts += ["## Generation (`benchmarks/generate.py`)", "", *generate_section(out / "generate.jsonl"), ""]
    return "\n".join(parts)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "gpu_out")
    text = report(out)
    (out / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
