"""`OvisForConditionalGeneration`: visual and text embeddings spliced into one causal-LM sequence.

Notation: B samples, L sequence length, C crops in the batch (all images of all samples, in order of
appearance), T visual tokens per crop, D LLM width, K visual vocabulary, n indicators.

    input_ids [B, L] -> LLM input embeddings                        [B, L, D]
    pixel_values [C, 3, S, S] -> visual tokenizer (backbone, merge)  [C, T, F]
      (NaViT, Ovis2.5: rows [N, C·T·p²] + grid_thw [n, 3]             [1, N/s², F])
      -> connector (head + VET, or the MLP; `modeling.connector`)   [C, T, D]
    splice: the k-th atom position (row-major over B then L) takes visual token k;
            positions of indicator i take the connector's indicator row i (the VET's row K - n + i;
            a connector without indicator rows, like the MLP, leaves their text embeddings)
    LLM(inputs_embeds) -> logits [B, L, V]; loss on labels != -100

A batch without images does not run the vision tower (except in distributed training, where every
process must use the same parameters at each step: there it runs one blank crop weighted 0). During cached generation the image is encoded
once, in the prefill step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers import initialization as _init  # initializers that respect already-loaded weights
from transformers.modeling_outputs import CausalLMOutputWithPast

from openovis.configuration import OvisConfig
from openovis.modeling.connector import build_connector
from openovis.modeling.visual_embedding import VisualEmbeddingTable
from openovis.modeling.visual_tokenizer import VisualTokenizer


class OvisPreTrainedModel(PreTrainedModel):
    config_class = OvisConfig
    base_model_prefix = "ovis"
    supports_gradient_checkpointing = True
    input_modalities = ("image", "text")
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        """Initializes Ovis's own parts; the backbone and the LLM keep their own initialization."""
        std = getattr(self.config.text_config, "initializer_range", 0.02)
        if isinstance(module, VisualEmbeddingTable):
            _init.normal_(module.weight, mean=0.0, std=self.config.vte_init_std)
        elif isinstance(module, nn.Linear):
            connector = getattr(self, "connector", None)
            chosen = connector.init_std(module) if connector is not None else None
            std = chosen if chosen is not None else std  # e.g. the MLP's output layer (mlp_out_init_std)
            _init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                _init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            _init.ones_(module.weight)
            _init.zeros_(module.bias)


class OvisForConditionalGeneration(OvisPreTrainedModel, GenerationMixin):
    """Ovis: a vision backbone, a connector (the visual head + VET, or another registered one) and any causal LM.

    Args:
        config: The model configuration.
        vision_model: Optional prebuilt (e.g. pretrained) transformers vision model.
        llm: Optional prebuilt (e.g. pretrained) transformers causal LM.
    """

    def __init__(
        self,
        config: OvisConfig,
        vision_model: PreTrainedModel | None = None,
        llm: PreTrainedModel | None = None,
    ):
        super().__init__(config)
        if config.vision_config is None or config.text_config is None:
            raise ValueError("vision_config/text_config: both are required to build a model")
        self.visual_tokenizer = VisualTokenizer(config, vision_model)
        self.llm = llm if llm is not None else AutoModelForCausalLM.from_config(config.text_config)
        self.connector = build_connector(config)
        self.post_init()

    # ---- embeddings ----------------------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.llm.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.llm.get_output_embeddings()

    def visual_embeddings(
        self, pixel_values: torch.Tensor, grid_thw: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Crops ``[C, 3, S, S]`` -> visual-token embeddings ``[C, T, D]`` in the LLM's input space
        (NaViT: rows ``[N, C·T·p²]`` and ``grid_thw [n, 3]`` -> ``[1, N/s², D]``)."""
        features = self.visual_tokenizer.features(pixel_values, grid_thw)  # [C, T, F]
        return self.connector(features)  # [C, T, D]

    def visual_probabilities(
        self, pixel_values: torch.Tensor, grid_thw: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Crops ``[C, 3, S, S]`` -> visual-word distributions ``[C, T, K]`` (connectors with a vocabulary)."""
        features = self.visual_tokenizer.features(pixel_values, grid_thw)  # [C, T, F]
        return self.connector.probabilities(features)  # [C, T, K]

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        past_length: int = 0,
        grid_thw: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Text embeddings with visual tokens and indicator rows spliced in: ``[B, L]`` -> ``[B, L, D]``."""
        cfg = self.config
        if cfg.image_atom_id is None:
            raise ValueError("image_atom_id: not set in the config; build the model with its tokenizer's ids")
        embedding = self.get_input_embeddings()
        embeds = embedding(input_ids)  # [B, L, D]
        # LLMs whose embedding multiplies by a scale (Gemma: sqrt(D)) scaled the whole inputs_embeds in
        # transformers 4, visual rows included (so the official Ovis1.6 does); transformers 5 moved the
        # scale into the embedding, so the visual and indicator rows get it here.
        scale = getattr(embedding, "embed_scale", None)
        atoms = input_ids == cfg.image_atom_id  # [B, L]
        n_atoms = int(atoms.sum())
        if pixel_values is not None and (n_atoms > 0 or past_length == 0):
            visual = self.visual_embeddings(pixel_values, grid_thw)  # [C, T, D]
            if visual.shape[0] * visual.shape[1] != n_atoms:
                raise ValueError(
                    f"image tokens and images do not match: the text has {n_atoms} atom tokens but "
                    f"{visual.shape[0]} crops give {visual.shape[0]} x {visual.shape[1]} visual tokens"
                )
            visual = visual.to(embeds.dtype)
            if scale is not None:
                visual = visual * scale.to(embeds.dtype)
            embeds = embeds.masked_scatter(atoms.unsqueeze(-1), visual)
        elif n_atoms > 0:
            raise ValueError(f"the text has {n_atoms} image atom tokens but no pixel_values were given")
        elif self._needs_dummy_image():
            # Distributed training: every process must use the same parameters (DDP) and enter the same
            # modules (ZeRO-3/FSDP) at every step, so a batch without images runs one blank crop, weighted 0.
            blank, blank_grid = self._blank_image(embeds.device)
            embeds = embeds + 0.0 * self.visual_embeddings(blank, blank_grid).sum().to(embeds.dtype)
        rows = self.connector.indicator_embeddings()  # [n, D], or None: indicators keep text embeddings
        if rows is not None and cfg.indicator_token_ids is not None:
            rows = rows.to(embeds.dtype)
            if scale is not None:
                rows = rows * scale.to(embeds.dtype)
            for i, token_id in enumerate(cfg.indicator_token_ids):
                embeds = torch.where((input_ids == token_id).unsqueeze(-1), rows[i], embeds)
        return embeds

    def _blank_image(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The smallest zero image the backbone takes: one crop, or one NaViT merge unit."""
        cfg, dtype = self.config, self.visual_tokenizer.backbone.dtype
        if cfg.native_resolution:
            vc, s = cfg.vision_config, cfg.hidden_stride
            width = vc.num_channels * vc.temporal_patch_size * vc.patch_size**2
            grid = torch.tensor([[1, s, s]])
            return torch.zeros(s * s, width, device=device, dtype=dtype), grid  # [s², C·T·p²]
        s = cfg.crop_size
        return torch.zeros(1, 3, s, s, device=device, dtype=dtype), None

    def _needs_dummy_image(self) -> bool:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        return distributed and self.training and torch.is_grad_enabled()

    # ---- forward -------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        grid_thw: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Runs the spliced sequence through the LLM.

        Args:
            input_ids: ``[B, L]`` token ids with atom and indicator tokens where images go.
            pixel_values: ``[C, 3, S, S]``: every crop of every image of the batch, in order of appearance
                (NaViT: the packed rows ``[N, C·T·p²]`` of every image).
            grid_thw: NaViT only: ``[n, 3]`` (t, h, w in patches) of every image, same order.
            attention_mask: ``[B, L]`` (1 = real token).
            position_ids: Optional ``[B, L]``.
            past_key_values: KV cache for generation.
            inputs_embeds: Precomputed ``[B, L, D]`` (then ``input_ids`` and ``pixel_values`` are unused).
            labels: ``[B, L]``, ``-100`` where no loss is taken; shifted inside the LLM.
            use_cache: Whether to return a KV cache.
            logits_to_keep: Keep only the last N positions' logits (0 = all).

        Returns:
            The LLM's ``CausalLMOutputWithPast`` (loss, logits, past_key_values, ...).
        """
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("input_ids: required when inputs_embeds is not given")
            past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
            inputs_embeds = self.embed_inputs(input_ids, pixel_values, past_length, grid_thw)
        if labels is not None and self.config.loss_impl != "reference":  # loss without [B, L, V] logits
            from openovis.modeling.fused_loss import forward_with_fused_loss

            return forward_with_fused_loss(
                self.llm,
                self.config.loss_impl,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                labels=labels,
                use_cache=use_cache,
                **kwargs,
            )
        return self.llm(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **({"past_key_values": past_key_values} if past_key_values is not None else {}),
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
