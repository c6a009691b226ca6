"""Reading a GGUF file's header: metadata only, memory-mapped, no tensor data (and no torch import),
shared by the model loader (architecture check) and the planner (model shape)."""

from __future__ import annotations

from pathlib import Path

from .errors import ModelError


class GGUFHeader:
    def __init__(self, path: str | Path):
        import gguf  # numpy only

        self.path = Path(path)
        self._string = gguf.GGUFValueType.STRING
        try:
            self.reader = gguf.GGUFReader(self.path)
        except Exception as e:  # gguf raises ValueError/struct errors on anything that is not GGUF
            raise ModelError(f"'{self.path}' is not a readable GGUF file ({e}). Check the file, or re-download/convert it.") from None

    def field(self, key: str, default=None):
        """A scalar metadata value (str or int), or `default` when the key is absent."""
        f = self.reader.fields.get(key)
        if f is None:
            return default
        value = f.parts[f.data[0]]
        return bytes(value).decode("utf-8") if f.types and f.types[0] == self._string else int(value[0])

    @property
    def architecture(self) -> str:
        arch = self.field("general.architecture")
        if arch is None:
            raise ModelError(f"'{self.path}' has no general.architecture field, so its model type is unknown. Is it a complete GGUF model file?")
        return arch

    @property
    def tensor_names(self) -> set[str]:
        return {t.name for t in self.reader.tensors}
