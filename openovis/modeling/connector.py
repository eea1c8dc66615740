"""Connectors: merged visual features -> LLM input embeddings, and the registry that names them.

Notation: C crops, T visual tokens per crop, F = d·s² merged feature width, D LLM width, K visual
vocabulary size, n indicator tokens.

    features [C, T, F] -> connector -> embeddings [C, T, D]
    probabilities(features) -> [C, T, K]     only a connector with a visual vocabulary (the VET)
    indicator_embeddings()  -> [n, D]        only a connector that embeds indicator tokens (the VET)

``OvisConfig.connector`` names a registered `Connector` subclass. Adding one is one file::

    @register_connector("linear")
    class LinearConnector(Connector):
        def __init__(self, config: OvisConfig):
            super().__init__()
            self.proj = nn.Linear(config.visual_feature_size, config.text_config.hidden_size)

        def forward(self, features):  # [C, T, F] -> [C, T, D]
            return self.proj(features)

plus, for a connector shipped with openovis, its import in ``openovis/modeling/__init__.py``.

Saved names. A connector lives at ``model.connector``, but may keep its parameters under other names
in checkpoints: the VET's are the official Ovis ``visual_tokenizer.head.*`` and ``vte.*``. A class
declares them in `Connector.checkpoint_names`; they are registered with transformers' checkpoint
conversion mapping (renamed on ``from_pretrained``, renamed back on ``save_pretrained``), and
`to_checkpoint_names` / `from_checkpoint_names` apply the same renames to state dicts for the converters.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import ClassVar, TypeVar

import torch
from torch import nn
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming

from openovis.configuration import OvisConfig
from openovis.options import CONNECTORS

PREFIX = "connector"
"""Where the connector sits in the model (``model.connector``): its in-memory parameter names start so."""
RESERVED = (f"{PREFIX}.", "llm.", "visual_tokenizer.backbone.")
"""In-memory namespaces of the model; no checkpoint name may fall inside one (or contain one)."""


class Connector(nn.Module):
    """Merged visual features ``[C, T, F]`` -> LLM input embeddings ``[C, T, D]``.

    Subclasses take the `OvisConfig` in ``__init__`` and implement ``forward``; the rest is optional.
    """

    name: ClassVar[str] = ""
    """The registered name (set by `register_connector`)."""
    lr_keys: ClassVar[Mapping[str, tuple[str, ...]]] = {"connector": ("",)}
    """Recipe ``module_lr`` keys -> the submodules of this connector each covers (``""``: all of it).
    Keys it does not name cover none of its parameters (`openovis.training.param_groups`)."""
    checkpoint_names: ClassVar[Mapping[str, str]] = {}
    """Submodule -> the full name prefix its parameters have in checkpoints (none: ``connector.<submodule>``)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[C, T, F]`` -> ``[C, T, D]``."""
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """``[C, T, F]`` -> distributions over the K visual words ``[C, T, K]`` (indicator columns zero)."""
        raise NotImplementedError(f"connector {self.name!r} has no visual vocabulary: no probabilities")

    def indicator_embeddings(self) -> torch.Tensor | None:
        """``[n, D]`` embeddings of the indicator tokens, or None: they keep their text embeddings."""
        return None

    def init_std(self, module: nn.Module) -> float | None:
        """Std of the normal initialization of this connector's ``module`` (None: the model's default)."""
        return None


# ---- registry: `openovis.options.CONNECTORS`, name -> class -----------------------------------------
C = TypeVar("C", bound=type[Connector])


def register_connector(name: str) -> Callable[[C], C]:
    """Class decorator: registers a `Connector` subclass under ``name`` (and its checkpoint names)."""

    def register(cls: C) -> C:
        if not (isinstance(cls, type) and issubclass(cls, Connector)):
            raise TypeError(f"register_connector({name!r}): {cls!r} is not a Connector subclass")
        old = CONNECTORS.get(name)
        if old is not None and _qualified(old) != _qualified(cls):  # re-importing a module is fine
            raise ValueError(f"connector {name!r} is already registered ({_qualified(old)})")
        cls.name = name
        rules = _rules({**CONNECTORS, name: cls})  # checks before anything is changed
        CONNECTORS[name] = cls
        _register_conversion(rules)
        return cls

    return register


def build_connector(config: OvisConfig) -> Connector:
    """The connector ``config.connector`` names, built from the config."""
    if config.connector not in CONNECTORS:
        raise ValueError(f"connector: {config.connector!r} is not registered; known: {sorted(CONNECTORS)}")
    connector = CONNECTORS[config.connector](config)
    own = {f"{PREFIX}.{sub}." for sub in type(connector).checkpoint_names}
    for key in connector.state_dict():
        name = f"{PREFIX}.{key}"
        foreign = [mem for mem, _ in _rules(CONNECTORS) if mem not in own and _match(mem, name)]
        if foreign:
            raise ValueError(
                f"connector {config.connector!r}: {name} falls under another connector's checkpoint rename "
                f"({foreign[0]}...); give the submodule another name"
            )
    return connector


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# ---- checkpoint names -------------------------------------------------------------------------------
def _rules(connectors: Mapping[str, type[Connector]]) -> list[tuple[str, str]]:
    """(in-memory prefix, checkpoint prefix) pairs of all connectors, e.g. ``("connector.vte.", "vte.")``.

    The renames apply to every openovis model (transformers keys them by model type), so no prefix
    may match another of its side, nor a checkpoint prefix one of the model's own namespaces.
    """
    rules = [
        (f"{PREFIX}.{sub}.", f"{saved}.")
        for cls in connectors.values()
        for sub, saved in cls.checkpoint_names.items()
    ]
    for side in (0, 1):
        names = [rule[side] for rule in rules]
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if _match(a, b) or _match(b, a):
                    raise ValueError(f"checkpoint_names: {a!r} and {b!r} overlap; renames would be ambiguous")
    for _, saved in rules:
        clash = [r for r in RESERVED if _match(saved, r) or _match(r, saved)]
        if clash:
            raise ValueError(f"checkpoint_names: {saved!r} overlaps the model's own names {clash[0]!r}")
    return rules


def _register_conversion(rules: list[tuple[str, str]]) -> None:
    """Makes ``from_pretrained`` rename checkpoint -> in-memory names, and ``save_pretrained`` back."""
    renames = [
        WeightRenaming(source_patterns=_pattern(saved), target_patterns=_pattern(mem)) for mem, saved in rules
    ]
    register_checkpoint_conversion_mapping(OvisConfig.model_type, renames, overwrite=True)


def _pattern(prefix: str) -> str:
    """A dotted module path as the anchored regex transformers matches, its dots unescaped: a pattern is
    also the replacement text of the reverse rename, which transformers up to 5.12 does not un-escape.
    Every check here matches with the same regex (`_match`), so a ``.`` standing for any character
    cannot rename a name it should not unnoticed."""
    if not all(part.isidentifier() or part.isdigit() for part in prefix.rstrip(".").split(".")):
        raise ValueError(f"checkpoint_names: {prefix!r} is not a dotted module path")
    return "^" + prefix


def _match(prefix: str, key: str) -> re.Match[str] | None:
    """Whether transformers' rename of ``prefix`` applies to ``key`` (the match, or None)."""
    return re.match(_pattern(prefix), key)


def _rename(key: str, rules: list[tuple[str, str]], to_checkpoint: bool) -> str:
    for mem, saved in rules:
        src, dst = (mem, saved) if to_checkpoint else (saved, mem)
        match = _match(src, key)
        if match:
            return dst + key[match.end() :]
    return key


def to_checkpoint_names(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """In-memory parameter names -> the names ``save_pretrained`` writes (others pass unchanged)."""
    rules = _rules(CONNECTORS)
    return {_rename(k, rules, to_checkpoint=True): v for k, v in state_dict.items()}


def from_checkpoint_names(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint names -> in-memory parameter names (the inverse of `to_checkpoint_names`)."""
    rules = _rules(CONNECTORS)
    return {_rename(k, rules, to_checkpoint=False): v for k, v in state_dict.items()}
