"""One process of the FSDP2 test (`test_fsdp.py`), started by torchrun: torch FSDP2 over gloo on CPU.

Shards the tiny model with ``fully_shard`` (each ViT and LLM block, then the root, as accelerate's
``TRANSFORMER_BASED_WRAP`` does), trains ``STEPS`` steps on this rank's half of a fixed global batch,
then saves the final model the way `openovis.training.run` does under FSDP: `saved_final_model`
gathers with accelerate's own ``Accelerator.get_state_dict`` (its FSDP2 branch) and rank 0 writes
``save_pretrained(state_dict=...)``.

Modes: ``full`` trains all steps; ``interrupted`` stops after ``STOP`` steps, having written a sharded
checkpoint (model and optimizer through torch.distributed.checkpoint, as accelerate's FSDP2
``save_state`` does); ``resume`` loads it and finishes the run.
Usage: ``torchrun --nproc_per_node 2 fsdp_worker.py OUT_DIR full|interrupted|resume``.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch.distributed.fsdp import fully_shard

from openovis import build_model
from openovis.training.distributed import saved_final_model

STEPS = 3
STOP = 1
BATCH = 4  # global


def global_batch(config, step: int) -> dict[str, torch.Tensor]:
    """A fixed batch of BATCH one-crop samples: an image span, then 6 random text tokens."""
    from model_helpers import image_span

    g = torch.Generator().manual_seed(step)
    span = torch.tensor(image_span(config))
    text = torch.randint(3, 200, (BATCH, 6), generator=g)
    ids = torch.cat([span.expand(BATCH, -1), text], dim=1)  # [B, L]
    labels = ids.clone()
    labels[:, : span.numel()] = -100
    pixels = torch.randn(BATCH, 3, config.crop_size, config.crop_size, generator=g)
    return {"input_ids": ids, "labels": labels, "pixel_values": pixels}


def optimizer_for(model: torch.nn.Module) -> torch.optim.Optimizer:
    """Plain SGD: AdamW divides by sqrt(v), so a gradient that is zero up to rounding (the key bias of
    attention) turns summation-order noise into full-size steps, and no tolerance separates that from
    a wrong gather. SGD keeps the difference at rounding level."""
    return torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)  # momentum: state to resume


def build() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = build_model("tiny", vet_impl="reference")
    return model, optimizer_for(model)


def train_step(model, optimizer, batch, rank: int, world: int) -> float:
    """Token-mean loss of the global batch; this rank backpropagates its share (as the loop does)."""
    count = int((batch["labels"][:, 1:] != -100).sum())
    per = BATCH // world
    local = {k: v[rank * per : (rank + 1) * per] for k, v in batch.items()}
    loss = model(**local, num_items_in_batch=torch.tensor(count)).loss
    (loss * world).backward()  # FSDP averages gradients over ranks
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def main(out: str, mode: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model, _ = build()
    for layers in (model.visual_tokenizer.backbone.encoder.layers, model.llm.model.layers):
        for layer in layers:
            fully_shard(layer)
    fully_shard(model)
    optimizer = optimizer_for(model)  # over the sharded (DTensor) parameters
    ckpt = str(Path(out).parent / "checkpoint")
    start = 0
    if mode == "resume":
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optimizer": optim_sd}
        # A parameter that never had a gradient (the ViT's unused post_layernorm) has no momentum
        # buffer in the checkpoint, while a fresh optimizer's state dict lists one: load the rest.
        dcp.load(state, checkpoint_id=ckpt, planner=dcp.DefaultLoadPlanner(allow_partial_load=True))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        start = STOP
    for step in range(start, STEPS):
        train_step(model, optimizer, global_batch(model.config, step), rank, world)
        if mode == "interrupted" and step + 1 == STOP:
            model_sd, optim_sd = get_state_dict(model, optimizer)
            dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=ckpt)
            dist.destroy_process_group()
            return
    assert type(model.llm.model.layers[0].mlp.up_proj.weight).__name__ == "DTensor"
    shim = SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=True)
    accelerator = SimpleNamespace(
        distributed_type=DistributedType.FSDP,
        is_main_process=rank == 0,
        unwrap_model=lambda m: m,
        get_state_dict=partial(Accelerator.get_state_dict, shim),
    )
    unwrapped, state_dict = saved_final_model(accelerator, model, out)
    if rank == 0:
        unwrapped.save_pretrained(out, state_dict=state_dict)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
