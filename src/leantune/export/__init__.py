"""`leantune export`: a finished run leaves leantune as a merged HF model, a GGUF file or a LoRA-GGUF adapter.
Import `export.api` for the entry point; this package's __init__ imports nothing (and so no torch)."""
