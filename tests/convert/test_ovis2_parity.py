"""openovis is Ovis: a tiny random transformers ``Ovis2ForConditionalGeneration``, converted, gives the
same visual-token probabilities, merged input embeddings, logits and gradients (CPU, fp32).

Inputs follow transformers' Ovis2 processor layout (``Ovis2Processor.replace_image_token``)::

    <IMG_START> atoms(crop 0) <IMG_GRID> [atoms <IMG_COL> atoms ... <IMG_ROW> ...] <IMG_END>
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close
from transformers import Ovis2Config, Ovis2ForConditionalGeneration, Qwen2Config
from transformers.models.ovis2.configuration_ovis2 import Ovis2VisionConfig
from transformers.models.ovis2.modeling_ovis2 import hard_softmax

from openovis import OvisForConditionalGeneration, build_model
from openovis.convert import (
    convert_hf_ovis2_checkpoint,
    hf_ovis2_to_openovis,
    openovis_to_hf_ovis2,
    rename_state_dict,
)
from openovis.modeling.connector import to_checkpoint_names
from openovis.ops.vet import draw_seed, gumbel_noise

K, N_IND, VOCAB, WIDTH = 64, 5, 96, 32
ATOM, INDICATORS, PAD = 90, (91, 92, 93, 94, 95), 0
CROP, PATCH, STRIDE = 32, 8, 2
T = (CROP // PATCH // STRIDE) ** 2  # visual tokens per crop


def tiny_hf_ovis2(
    tokenize_function: str = "softmax",
    tie: bool = False,
    vocab: int = VOCAB,
    atom: int = ATOM,
    indicators: tuple[int, ...] = INDICATORS,
) -> Ovis2ForConditionalGeneration:
    """A random transformers Ovis2 with every weight moved off its init (norms off 1, biases off 0)."""
    vision = Ovis2VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=CROP,
        patch_size=PATCH,
        hidden_stride=STRIDE,
        vocab_size=K,
        num_visual_indicator_tokens=N_IND,
        tokenize_function=tokenize_function,
    )
    text = Qwen2Config(
        vocab_size=vocab,
        hidden_size=WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=tie,
    )
    config = Ovis2Config(
        vision_config=vision,
        text_config=text,
        image_token_id=atom,
        visual_indicator_token_ids=list(indicators),
        vocab_size=vocab,
        hidden_size=WIDTH,
        tie_word_embeddings=tie,
    )
    model = Ovis2ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


def image_ids(rows: int, cols: int) -> list[int]:
    """Token ids of one image with a rows×cols grid, as transformers' Ovis2 processor lays them out."""
    start, grid, col, row, end = INDICATORS
    atoms = [ATOM] * T
    ids = [start, *atoms, grid]
    if rows * cols > 1:
        for r in range(rows):
            for c in range(cols):
                ids += atoms + ([col] if c < cols - 1 else [])
            ids += [row] if r < rows - 1 else []
    return [*ids, end]


def crops(rows: int, cols: int) -> int:
    return 1 if rows * cols == 1 else 1 + rows * cols


def make_batch(grids: tuple[tuple[int, int], ...]) -> dict[str, torch.Tensor]:
    """One image per sample, text around it, right-padded to one length."""
    seqs = [[3 + i, 4, *image_ids(*g), 5, 6 + i, 7] for i, g in enumerate(grids)]
    length = max(map(len, seqs))
    input_ids = torch.tensor([s + [PAD] * (length - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (length - len(s)) for s in seqs])
    pixel_values = torch.randn(sum(crops(*g) for g in grids), 3, CROP, CROP)
    return {"input_ids": input_ids, "attention_mask": mask, "pixel_values": pixel_values}


def hf_probabilities(hf: Ovis2ForConditionalGeneration, pixel_values: torch.Tensor) -> torch.Tensor:
    """transformers' visual-token distributions with the n indicator columns, as ``get_image_features`` pads."""
    probs = hf.model.vision_tower(pixel_values).pooler_output  # [C, T, K-n]
    return F.pad(probs, (0, N_IND))  # [C, T, K]


def hf_inputs_embeds(hf: Ovis2ForConditionalGeneration, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The spliced ``inputs_embeds`` transformers' Ovis2 hands its language model."""
    seen: dict[str, torch.Tensor] = {}

    def grab(_module, _args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach().clone()

    handle = hf.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        hf(**batch)
    finally:
        handle.remove()
    return seen["embeds"]


def probabilities_without_final_norm(
    hf: Ovis2ForConditionalGeneration, pixel_values: torch.Tensor
) -> torch.Tensor:
    """transformers' vision tower run by hand, skipping its final RMSNorm: the official Ovis2 numerics."""
    tower = hf.model.vision_tower
    hidden = tower.transformer.embeddings(pixel_values)  # [C, P, d]
    for layer in tower.transformer.encoder.layers:
        hidden = layer(hidden, None)
    c, p, d = hidden.shape
    g = int(p**0.5)
    grid = hidden.reshape(c, g // STRIDE, STRIDE, g // STRIDE, STRIDE, d).permute(0, 1, 3, 2, 4, 5)
    merged = grid.reshape(c, -1, STRIDE * STRIDE * d)  # [C, T, d·s²]
    probs = tower.head_norm(tower.head_linear(merged)).softmax(dim=-1)  # [C, T, K-n]
    return F.pad(probs, (0, N_IND))


def gumbel_softmax_with_openovis_noise(logits: torch.Tensor, dim: int = -1, hard: bool = False):
    """``F.gumbel_softmax(logits, hard=True)`` (τ = 1) with the Gumbel noise openovis draws."""
    assert hard and dim in (-1, logits.dim() - 1)
    h = logits.shape[-1]
    noise = gumbel_noise(draw_seed(), 0, logits.numel() // h, h, logits.device).view_as(logits)
    return hard_softmax(logits + noise, dim=dim)


GRIDS = [((1, 1), (1, 2)), ((2, 2), (1, 1))]


# ---- numerics ---------------------------------------------------------------------------------------
@torch.no_grad()
@pytest.mark.parametrize("tokenize_function", ["softmax", "st_argmax", "gumbel_argmax"])
def test_visual_token_probabilities_match(tokenize_function: str, monkeypatch) -> None:
    hf = tiny_hf_ovis2(tokenize_function)
    ours = hf_ovis2_to_openovis(hf, vet_impl="reference")
    pixel_values = torch.randn(3, 3, CROP, CROP)
    # gumbel_argmax: the same noise. openovis draws it row by row from a seed (`openovis.ops.vet.gumbel_noise`,
    # so that its fused op can redraw it); transformers' F.gumbel_softmax(hard=True) is its own straight-through
    # argmax of (logits + noise), fed here the noise openovis draws from the same seed.
    monkeypatch.setattr(F, "gumbel_softmax", gumbel_softmax_with_openovis_noise)
    torch.manual_seed(1)
    got = ours.visual_probabilities(pixel_values)
    torch.manual_seed(1)
    want = hf_probabilities(hf, pixel_values)
    assert got.shape == (3, T, K)
    if tokenize_function != "softmax":  # hard one-hot forward
        assert torch.equal(got.amax(dim=-1), torch.ones(3, T))
    assert_close(got, want)


@torch.no_grad()
@pytest.mark.parametrize("grids", GRIDS)
@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("vet_impl", ["reference", "auto"])  # auto: the fused VET op of openovis.ops.vet
def test_merged_embeddings_and_logits_match(
    grids: tuple[tuple[int, int], ...], tie: bool, vet_impl: str
) -> None:
    hf = tiny_hf_ovis2(tie=tie)
    ours = hf_ovis2_to_openovis(hf, vet_impl=vet_impl)
    assert (ours.llm.lm_head.weight is ours.llm.model.embed_tokens.weight) == tie
    batch = make_batch(grids)
    embeds = ours.embed_inputs(batch["input_ids"], batch["pixel_values"])
    assert_close(embeds, hf_inputs_embeds(hf, batch))
    # indicator positions hold VET rows K-n+i; atom positions hold probs @ VET
    start = batch["input_ids"] == INDICATORS[0]
    assert_close(embeds[start], ours.connector.vte.weight[K - N_IND].expand(int(start.sum()), -1))
    assert_close(ours(**batch).logits, hf(**batch).logits)


def test_loss_and_gradients_match() -> None:
    hf = tiny_hf_ovis2("st_argmax")
    ours = hf_ovis2_to_openovis(hf, vet_impl="reference")
    batch = make_batch(GRIDS[0])
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    loss_ours = ours(**batch, labels=labels).loss
    loss_hf = hf(**batch, labels=labels).loss
    assert_close(loss_ours, loss_hf)
    loss_ours.backward()
    loss_hf.backward()
    grads_hf = rename_state_dict({n: p.grad for n, p in hf.named_parameters()}, "hf_to_openovis")
    grads_ours = to_checkpoint_names({n: p.grad for n, p in ours.named_parameters()})
    assert set(grads_ours) <= set(grads_hf)
    for name, grad in grads_ours.items():
        assert_close(grad, grads_hf[name], msg=lambda m, n=name: f"{n}: {m}")


@torch.no_grad()
def test_pre_norm_gives_the_official_numerics() -> None:
    hf = tiny_hf_ovis2()
    official = hf_ovis2_to_openovis(hf, backbone_feature="pre_norm", vet_impl="reference")
    pixel_values = torch.randn(2, 3, CROP, CROP)
    got = official.visual_probabilities(pixel_values)
    theirs = hf_probabilities(hf, pixel_values)
    assert (got - theirs).abs().max() > 1e-2, "pre_norm must differ from transformers' post-norm features"
    assert_close(got, probabilities_without_final_norm(hf, pixel_values))


@torch.no_grad()
def test_greedy_generation_matches() -> None:
    hf = tiny_hf_ovis2()
    ours = hf_ovis2_to_openovis(hf, vet_impl="reference")
    batch = make_batch(((1, 2),))
    settings = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": PAD}
    assert torch.equal(ours.generate(**batch, **settings), hf.generate(**batch, **settings))


# ---- round trips and folders ------------------------------------------------------------------------
def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


def test_round_trips_are_bit_identical() -> None:
    ours = build_model("ovis2-2b-like", scale_down=True, backbone_feature="post_norm", vet_impl="reference")
    back = hf_ovis2_to_openovis(openovis_to_hf_ovis2(ours), vet_impl="reference")
    assert_same_state(ours, back)
    assert back.config.to_diff_dict() == ours.config.to_diff_dict() | {
        "architectures": back.config.architectures
    }
    hf = tiny_hf_ovis2(tie=True)
    assert_same_state(hf, openovis_to_hf_ovis2(hf_ovis2_to_openovis(hf)))


def test_dtype_is_kept() -> None:
    hf = tiny_hf_ovis2().to(torch.bfloat16)
    ours = hf_ovis2_to_openovis(hf, vet_impl="reference")
    assert ours.connector.vte.weight.dtype == torch.bfloat16
    assert_same_state(hf, openovis_to_hf_ovis2(ours))


@torch.no_grad()
def test_saved_folders_convert_and_load(tmp_path) -> None:
    hf = tiny_hf_ovis2(tie=True)
    batch = make_batch(GRIDS[0])
    want = hf(**batch).logits
    hf.save_pretrained(tmp_path / "hf")
    convert_hf_ovis2_checkpoint(tmp_path / "hf", tmp_path / "ours", "hf_to_openovis", vet_impl="reference")
    ours = OvisForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    assert ours.config.backbone_feature == "post_norm"
    assert ours.llm.lm_head.weight is ours.llm.model.embed_tokens.weight
    assert_close(ours(**batch).logits, want)
    convert_hf_ovis2_checkpoint(tmp_path / "ours", tmp_path / "hf2", "openovis_to_hf")
    hf2 = Ovis2ForConditionalGeneration.from_pretrained(tmp_path / "hf2").eval()
    assert_same_state(hf, hf2)
    assert (tmp_path / "hf2" / "generation_config.json").exists()


@torch.no_grad()
def test_a_converted_folder_gets_a_processor_and_answers(tmp_path) -> None:
    from PIL import Image

    from openovis.builders import CLIP_MEAN
    from openovis.constants import IMAGE_ATOM, INDICATOR_TOKENS_OVIS2
    from openovis.convert import convert_checkpoint
    from openovis.data.text_tokenizer import byte_level_tokenizer
    from openovis.inference import OvisPipeline
    from openovis.processing.processor import OvisProcessor

    tokenizer = byte_level_tokenizer()  # <IMG_ATOM> 5, the five Ovis2 indicators 6-10, as in transformers
    tokenizer.chat_template = None  # the converter falls back to the official Ovis2 template
    atom, indicators = tokenizer.convert_tokens_to_ids([IMAGE_ATOM, *INDICATOR_TOKENS_OVIS2])[:1], ()
    indicators = tuple(tokenizer.convert_tokens_to_ids(list(INDICATOR_TOKENS_OVIS2)))
    hf = tiny_hf_ovis2(tie=True, vocab=len(tokenizer), atom=atom[0], indicators=indicators)
    hf.save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").write_text('{"max_patches": 4}')
    notes = convert_checkpoint(tmp_path / "hf", tmp_path / "ours", to="openovis")
    assert any(n.startswith("processor: crop 32px (letterboxed), max_partition 4") for n in notes)
    processor = OvisProcessor.from_pretrained(tmp_path / "ours")
    assert processor.image_config.max_partition == 4
    assert tuple(processor.image_config.image_mean) == tuple(CLIP_MEAN)  # AIMv2's, not SigLIP's 0.5
    assert processor.atom_token_id == atom[0] and processor.indicator_token_ids == indicators
    assert "You are a helpful assistant." in processor.tokenizer.chat_template  # Ovis2's default prompt
    pipe = OvisPipeline.from_pretrained(tmp_path / "ours")
    answer = pipe.chat("What is it?", [Image.new("RGB", (50, 70), "red")], max_new_tokens=3)
    assert isinstance(answer, str)

    bare = tmp_path / "bare"
    hf.save_pretrained(bare)
    notes = convert_checkpoint(bare, tmp_path / "ours2", to="openovis")
    assert any("no tokenizer in the source folder" in n for n in notes)
    assert not (tmp_path / "ours2" / "processor_config.json").exists()


def test_sharded_folder(tmp_path) -> None:
    hf = tiny_hf_ovis2()
    hf.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    convert_hf_ovis2_checkpoint(tmp_path / "hf", tmp_path / "ours", "hf_to_openovis", max_shard_size="20KB")
    assert (tmp_path / "ours" / "model.safetensors.index.json").exists()
    ours = OvisForConditionalGeneration.from_pretrained(tmp_path / "ours")
    assert_same_state(hf, openovis_to_hf_ovis2(ours))


# ---- what cannot be converted says so ---------------------------------------------------------------
def test_unmapped_and_missing_keys_are_listed() -> None:
    hf = tiny_hf_ovis2()
    state = hf.state_dict()
    with pytest.raises(ValueError, match=r"model\.extra\.weight"):
        hf_ovis2_to_openovis({**state, "model.extra.weight": torch.zeros(1)}, hf.config)
    del state["model.vision_tower.head_norm.bias"]
    with pytest.raises(ValueError, match=r"missing \['visual_tokenizer\.head\.1\.bias'\]"):
        hf_ovis2_to_openovis(state, hf.config)


def test_pre_norm_export_needs_consent() -> None:
    ours = build_model("ovis2-2b-like", scale_down=True, vet_impl="reference")
    assert ours.config.backbone_feature == "pre_norm"
    with pytest.raises(ValueError, match="accept_post_norm"):
        openovis_to_hf_ovis2(ours)
    hf = openovis_to_hf_ovis2(ours, accept_post_norm=True)
    assert_same_state(ours, hf_ovis2_to_openovis(hf, backbone_feature="pre_norm", vet_impl="reference"))


@pytest.mark.parametrize(
    ("preset", "overrides", "message"),
    [
        ("tiny", {}, "Aimv2VisionConfig"),
        ("ovis2-2b-like", {"connector": "mlp"}, "connector"),
        ("ovis2-2b-like", {"tokenize_temperature": 0.5}, "temperature"),
    ],
)
def test_inexpressible_models_raise(preset: str, overrides: dict, message: str) -> None:
    ours = build_model(preset, scale_down=preset != "tiny", backbone_feature="post_norm", **overrides)
    with pytest.raises(ValueError, match=message):
        openovis_to_hf_ovis2(ours)
