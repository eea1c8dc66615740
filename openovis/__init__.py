"""openovis: an open implementation of Ovis (structural embedding alignment for multimodal LLMs)."""
