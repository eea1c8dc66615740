"""Checkpoint conversion: transformers' native Ovis2 and the official AIDC-AI Ovis layouts (1.x, 2, 2.5; DESIGN §6).

    convert_checkpoint(src, dst, to="openovis" | "official" | "hf-ovis2")   # any folder, layout detected

    hf_ovis2_to_openovis(hf_model)                 # Ovis2ForConditionalGeneration -> OvisForConditionalGeneration
    openovis_to_hf_ovis2(model)                    # and back (bit-identical round trip)
    convert_hf_ovis2_checkpoint(src, dst, "hf_to_openovis" | "openovis_to_hf")   # saved folders
    official_to_openovis(state_dict, config_dict, image_atom_id=..., indicator_token_ids=...)
    convert_official_checkpoint(src, dst, image_atom_id=..., indicator_token_ids=...)

See docs/conversion.md for the key maps and the numerical differences between the layouts.
"""

from openovis.convert.folders import (
    check_official_compatible,
    convert_checkpoint,
    detect_layout,
    official_config_from_openovis,
    official_placeholder_map,
)
from openovis.convert.official import (
    convert_official_checkpoint,
    official_state_dict_to_openovis,
    official_to_openovis,
    openovis_config_from_official,
    openovis_state_dict_to_official,
    openovis_to_official_state_dict,
)
from openovis.convert.ovis2_hf import (
    check_hf_ovis2_compatible,
    convert_hf_ovis2_checkpoint,
    hf_ovis2_config_from_openovis,
    hf_ovis2_to_openovis,
    openovis_config_from_hf_ovis2,
    openovis_to_hf_ovis2,
    rename_state_dict,
)

__all__ = [
    "check_official_compatible",
    "convert_checkpoint",
    "detect_layout",
    "official_config_from_openovis",
    "official_placeholder_map",
    "check_hf_ovis2_compatible",
    "convert_hf_ovis2_checkpoint",
    "convert_official_checkpoint",
    "hf_ovis2_config_from_openovis",
    "hf_ovis2_to_openovis",
    "official_state_dict_to_openovis",
    "official_to_openovis",
    "openovis_config_from_hf_ovis2",
    "openovis_config_from_official",
    "openovis_state_dict_to_official",
    "openovis_to_hf_ovis2",
    "openovis_to_official_state_dict",
    "rename_state_dict",
]
