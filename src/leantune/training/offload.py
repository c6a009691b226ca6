"""Activation offloading: what the forward pass saves for backward is kept in CPU memory and copied back when the
backward pass reaches it (torch.autograd.graph.save_on_cpu, PyTorch's own hook pair; pinned host memory on CUDA so
the copies run at PCIe speed). With activation checkpointing what is saved is each decoder layer's input, so the
GPU holds about one layer's activations; the planner counts the rest as host memory and the copies as time
(plan/memory.py, plan/timing.py). torchtune's OffloadActivations overlaps the copies with compute on a side stream;
these copies run on the compute stream: simpler, and slower by the copy time the planner adds.

On a CPU run the host memory is the device's: offloading saves nothing there and costs a copy of every saved
tensor, so the trainer says so (it still runs, which is what the CPU tests check: same losses and gradients)."""

from __future__ import annotations

import contextlib

import torch


def saved_activations(enabled: bool, device: str):
    """The context one training step's forward and backward run in."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autograd.graph.save_on_cpu(pin_memory=device == "cuda")


def offload_note(enabled: bool, device: str) -> str | None:
    if not enabled:
        return None
    if device == "cpu":
        return ("[yellow]training.activation_offload on a CPU run: the activations are already in CPU memory, so it "
                "saves nothing and copies every saved tensor; set it to false unless you are testing it[/]")
    return "training.activation_offload: saved activations wait in pinned CPU memory until backward needs them"
