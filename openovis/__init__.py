"""openovis: an open implementation of Ovis (structural embedding alignment for multimodal LLMs).

Importing the package registers ``model_type: openovis`` with transformers' Auto classes, so saved
models load with ``AutoModelForImageTextToText.from_pretrained(dir)`` and no remote code.
"""

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from openovis.builders import PRESETS, build_config, build_model
from openovis.configuration import OvisConfig
from openovis.modeling.ovis import OvisForConditionalGeneration

AutoConfig.register(OvisConfig.model_type, OvisConfig, exist_ok=True)
AutoModelForImageTextToText.register(OvisConfig, OvisForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(OvisConfig, OvisForConditionalGeneration, exist_ok=True)

__version__ = "0.1.0"
__all__ = [
    "PRESETS",
    "OvisConfig",
    "OvisForConditionalGeneration",
    "build_config",
    "build_model",
    "__version__",
]
