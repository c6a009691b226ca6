"""Peak training memory per GPU, term by term. Every term is a formula with its source; MEMORY_MODEL.md
beside this file walks through them with a worked example.

Notation: N parameters, b micro-batch, s sequence length, h hidden size, i MLP intermediate size,
q = heads x head_dim, kv = kv_heads x head_dim, V vocabulary, L layers, p bytes per activation element
(2 for bf16, 4 for fp32).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .setup import BLOCK_LINEARS, Setup
from .shapes import ModelShape

GiB = 2**30

# NF4 (Dettmers et al. 2023, QLoRA): 4 bits per weight + one fp32 absmax per 64-weight block = 4.5 bits;
# double quantisation stores the absmax in 8 bits with one fp32 constant per 256 blocks:
# 4 + 8/64 + 32/(64*256) = 4.127 bits.
NF4_BITS_DOUBLE_QUANT = 4 + 8 / 64 + 32 / (64 * 256)
# Adam keeps two moments per trainable parameter: fp32 8 bytes; bitsandbytes 8-bit Adam 2 bytes
# (Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization").
OPTIMIZER_BYTES = {"adamw": 8, "adamw8bit": 2}
# A CUDA context with cuBLAS/cuDNN workspaces takes ~0.5-1 GiB before any tensor (PyTorch forum
# measurements on A100/H100); the caching allocator's fragmentation adds a few percent of the rest.
CUDA_CONTEXT_BYTES = 0.75 * GiB
ALLOCATOR_MARGIN = 0.05
# On CPU the process itself is resident before any weight: 0.39 GiB with torch, transformers and peft
# imported, measured on this project's machine (2-core AMD EPYC, Python 3.11, torch 2.13 CPU).
CPU_PROCESS_BYTES = 0.39 * GiB


@dataclass
class MemoryBreakdown:
    weights: float
    trainable_weights: float  # adapters (fp32) or fp32 master weights for full mixed-precision training
    gradients: float
    optimizer: float
    activations: float
    logits: float
    reference_model: float  # DPO with full fine-tuning keeps a frozen copy
    overhead: float
    in_cpu_memory: float = 0.0  # activations offloaded to the host (activation_offload): not on the GPU, not in total

    @property
    def total(self) -> float:
        """Gradients are allocated during the backward pass as the activations and logits it consumes are
        freed (optimizer.zero_grad(set_to_none=True), PyTorch's default), so the peak holds the larger of
        the two, not their sum: activations at the start of the backward pass, gradients at its end."""
        static = self.weights + self.trainable_weights + self.optimizer + self.reference_model + self.overhead
        return static + max(self.activations + self.logits, self.gradients)

    def as_gib(self) -> dict[str, float]:
        return {k: v / GiB for k, v in asdict(self).items()} | {"total": self.total / GiB}


def trainable_params(shape: ModelShape, setup: Setup) -> int:
    if setup.method == "full":
        return shape.total_params
    lora = shape.lora_params(setup.lora_rank, setup.lora_targets)
    if setup.method == "dora":  # DoRA adds a magnitude vector of d_out per adapted layer (Liu et al. 2024)
        lora += shape.layers * sum(copies * d_out for name, _, d_out, copies in shape.linear_layers()
                                   if setup.lora_targets == "all-linear" or name in setup.lora_targets)
    return lora


def weight_bytes(shape: ModelShape, setup: Setup) -> float:
    """Frozen or trained base weights. QLoRA: block linears in NF4, embeddings / head / norms in 16-bit."""
    if setup.method == "qlora":
        rest = shape.total_params - shape.block_linear_params
        return shape.block_linear_params * NF4_BITS_DOUBLE_QUANT / 8 + rest * 2
    return shape.total_params * setup.act_bytes


def _targets(setup: Setup) -> set[str]:
    names = set(BLOCK_LINEARS)
    if setup.method == "full" or setup.lora_targets == "all-linear":
        return names
    return names & set(setup.lora_targets)


def activation_bytes_per_layer(shape: ModelShape, setup: Setup, b: int) -> float:
    """What one decoder layer keeps for the backward pass, for a HF-style Llama block.

    Starts from Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
    Models"), sbh(34 + 5as/h) bytes for a GPT block with 16-bit activations, and recounts it tensor by
    tensor for this architecture, using the fact that autograd saves an operand only when the other
    operand needs a gradient (checked with saved-tensor hooks on SmolLM2-135M; MEMORY_MODEL.md):
      - RMSNorm (x2): its fp32 input (4h) always; the normalised tensor (p*h) only when the norm weight
        trains (full fine-tuning); its output (p*h) when a following linear layer trains or is adapted.
      - attention: rotary embeddings save only cos/sin, so q and k are kept once, after rotation, by
        SDPA, with v and the output: p*(2q + 2kv), plus a fp32 log-sum-exp per head. Eager attention
        also keeps the fp32 softmax and its 16-bit cast: b*heads*s^2*(4 + p).
      - SwiGLU MLP: gate output, SiLU output and up output always (p*3i); their product, the input of
        down_proj, when down_proj trains or is adapted (p*i).
      - LoRA: x @ A (p*r) per adapted layer, and with dropout > 0 the dropped-out input and its mask (p + 1),
        or with leantune's LoRA function only the byte mask (1).
    Grouped-query k/v are not expanded: SDPA takes them as they are (enable_gqa).
    """
    s, h, p = setup.seq_len, shape.hidden, setup.act_bytes
    tokens = b * s
    trained = _targets(setup)
    full = setup.method == "full"

    def norm(output_needed: bool) -> float:
        return tokens * h * (4 + (p if full else 0) + (p if output_needed else 0))

    norms = norm(bool(trained & {"q_proj", "k_proj", "v_proj"})) + norm(bool(trained & {"gate_proj", "up_proj"}))
    attention = p * tokens * (2 * shape.q_dim + 2 * shape.kv_dim) + 4 * b * shape.heads * s
    if setup.attention == "eager":
        attention += b * shape.heads * s * s * (4 + (p if p < 4 else 0))
    experts = shape.experts_per_token or 1  # each token's MLP activations exist once per chosen expert
    mlp = experts * p * tokens * shape.intermediate * (3 + (1 if "down_proj" in trained else 0))
    adapters = 0.0
    if setup.is_adapter:
        for name, d_in, _, copies in shape.linear_layers():
            if name not in trained:
                continue
            active = min(copies, experts)
            adapters += active * tokens * setup.lora_rank * p
            if setup.lora_dropout > 0:
                adapters += active * tokens * d_in * (1 if setup.lora_dropout_mask_only else p + 1)
    return norms + attention + mlp + adapters


# Activation offloading (torch.autograd.graph.save_on_cpu; torchtune's OffloadActivations) moves what the layers
# save for backward into host memory as it is saved and brings it back when backward reaches it. The GPU keeps the
# layer being computed and one in transit. With checkpointing what is saved is each layer's input; without, every
# tensor the layer saves.
OFFLOAD_LAYERS_ON_GPU = 2


def activation_split(shape: ModelShape, setup: Setup) -> tuple[float, float]:
    """(bytes of activations on the device at the peak, bytes offloaded to CPU memory)."""
    b = setup.micro_batch * (2 if setup.objective == "dpo" else 1)  # DPO: chosen and rejected
    per_layer = activation_bytes_per_layer(shape, setup, b)
    # The final norm keeps its fp32 input and its output (the lm_head's input).
    embeddings_and_final_norm = b * setup.seq_len * shape.hidden * (4 + setup.act_bytes)
    de_quantised = 0.0
    if setup.method == "qlora" and setup.device == "cpu":
        # bitsandbytes 0.50 on CPU (no fused 4-bit kernel) ends up holding every layer's de-quantised
        # weight, with or without checkpointing: measured +0.35-0.41 GiB on SmolLM2-135M, its block
        # linears at 4 bytes each.
        de_quantised = shape.block_linear_params * setup.act_bytes
    elif setup.method == "qlora":  # CUDA kernels de-quantise one weight matrix at a time
        de_quantised = max(d_in * d_out for _, d_in, d_out, _ in shape.linear_layers()) * setup.act_bytes
    # with checkpointing a layer keeps only its input and is recomputed, one at a time, in the backward pass
    layer_input = b * setup.seq_len * shape.hidden * setup.act_bytes
    saved, working = (layer_input, per_layer) if setup.grad_checkpointing else (per_layer, 0.0)
    offloaded = 0.0
    if setup.activation_offload and setup.device == "cuda":  # on a CPU run the host memory is the device's
        kept = min(shape.layers, OFFLOAD_LAYERS_ON_GPU)
        offloaded = (shape.layers - kept) * saved
        layers = kept * saved + working
    else:
        layers = shape.layers * saved + working
    return layers + embeddings_and_final_norm + de_quantised, offloaded


def activation_bytes(shape: ModelShape, setup: Setup) -> float:
    return activation_split(shape, setup)[0]


def logits_bytes(shape: ModelShape, setup: Setup) -> float:
    """The output layer's share of the peak: 12 bytes per logit, whatever the compute dtype.

    The loss runs in fp32 (HF upcasts 16-bit logits). The peak comes at the start of the backward pass,
    when three fp32 b*s*V tensors coexist: the log-softmax output cross-entropy saved, the gradient
    arriving at it, and the gradient it passes back to the logits; the forward's logits copies are
    already freed by then. (The usual rule of thumb, 2 x bytes, i.e. 8 for fp32, undershot our CPU
    measurements in bench/memory_model.py by the third tensor.) For 150k-256k vocabularies this is often
    the largest single term; DPO doubles the sequences; chunked cross-entropy (leantune's
    training.loss_chunk) caps it at one chunk of positions.
    """
    b = setup.micro_batch * (2 if setup.objective == "dpo" else 1)
    positions = b * setup.seq_len * setup.loss_positions
    if setup.loss_chunk:  # chunked cross-entropy: one chunk's logits at a time
        positions = min(positions, setup.loss_chunk)
    return positions * shape.vocab * 12


def estimate_peak_memory(shape: ModelShape, setup: Setup) -> MemoryBreakdown:
    """Peak memory on one GPU (or the CPU process) for one training step of `setup`."""
    n_train = trainable_params(shape, setup)
    weights = weight_bytes(shape, setup)
    optimizer = n_train * OPTIMIZER_BYTES[setup.optimizer]
    if not setup.master_weights:
        # pure bf16 (torchtune's and LitGPT's bf16-true): what trains, its gradient and Adam's two moments are all
        # kept in the weights' 16 bits; nothing in fp32
        trainable_weights = 0 if setup.method == "full" else n_train * setup.act_bytes
        gradients = n_train * setup.act_bytes
        if setup.optimizer == "adamw":
            optimizer = n_train * 2 * setup.act_bytes
    elif setup.method == "full":
        # Mixed precision keeps fp32 master weights beside 16-bit ones (Micikevicius et al. 2018;
        # with Adam: the 16 bytes/param of the ZeRO paper, Rajbhandari et al. 2020).
        trainable_weights = n_train * 4 if setup.dtype == "bf16" else 0
        gradients = n_train * setup.act_bytes
    else:
        trainable_weights = n_train * 4  # PEFT keeps adapter weights in fp32
        gradients = n_train * 4
    reference = weights if (setup.objective == "dpo" and setup.method == "full") else 0.0

    if setup.optimizer_in_backward:  # one weight's gradient at a time: the largest weight matrix's
        largest = max([shape.vocab * shape.hidden] + [d_in * d_out for _, d_in, d_out, _ in shape.linear_layers()])
        gradients = min(gradients, largest * (gradients / max(n_train, 1)))
    n = setup.gpus
    if setup.sharding in ("zero1", "zero2", "zero3", "fsdp"):
        optimizer /= n
        trainable_weights /= n
    if setup.sharding in ("zero2", "zero3", "fsdp"):
        gradients /= n
    if setup.sharding in ("zero3", "fsdp"):
        weights /= n
        reference /= n

    activations, offloaded = activation_split(shape, setup)
    logits = logits_bytes(shape, setup)
    subtotal = weights + trainable_weights + optimizer + reference + max(activations + logits, gradients)
    base = CUDA_CONTEXT_BYTES if setup.device == "cuda" else CPU_PROCESS_BYTES
    overhead = base + ALLOCATOR_MARGIN * subtotal
    return MemoryBreakdown(weights, trainable_weights, gradients, optimizer, activations, logits, reference, overhead,
                           offloaded)
