"""Model preparation and loading: SmolLM2 export from GGUF, tiny test models, vLLM weight sync."""
