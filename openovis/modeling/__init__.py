"""Model parts. Importing the package registers the built-in connectors (one import line each)."""

from openovis.modeling import connector_mlp, visual_embedding  # noqa: F401  (registers "mlp", "vet")
