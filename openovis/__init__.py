"""openovis: an open implementation of Ovis (structural embedding alignment for multimodal LLMs).

Importing the package registers ``model_type: openovis`` with transformers' Auto classes, so saved
models load with ``AutoModelForImageTextToText.from_pretrained(dir)`` (and their processors with
``AutoProcessor.from_pretrained(dir)``) and no remote code.
"""

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from openovis.builders import PRESETS, build_config, build_model
from openovis.configuration import OvisConfig
from openovis.modeling.ovis import OvisForConditionalGeneration


def _register_processors() -> None:
    """``AutoProcessor`` / ``AutoImageProcessor`` find the Ovis processors without remote code."""
    from transformers import AutoImageProcessor, AutoProcessor

    from openovis.processing.image_processor import OvisImageProcessor
    from openovis.processing.processor import OvisProcessor

    AutoImageProcessor.register(
        OvisConfig, image_processor_classes={"pil": OvisImageProcessor}, exist_ok=True
    )
    AutoProcessor.register(OvisConfig, OvisProcessor, exist_ok=True)


AutoConfig.register(OvisConfig.model_type, OvisConfig, exist_ok=True)
AutoModelForImageTextToText.register(OvisConfig, OvisForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(OvisConfig, OvisForConditionalGeneration, exist_ok=True)
_register_processors()

__version__ = "0.1.0"
__all__ = [
    "PRESETS",
    "OvisConfig",
    "OvisForConditionalGeneration",
    "build_config",
    "build_model",
    "__version__",
]
