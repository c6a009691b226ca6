"""The training loop and its parts: objectives/ (sft, dpo, distill and the EWC / replay terms), methods/ (lora,
qlora, dora, adalora, full), checkpoints, the budget guard, signals. `api.train` is the entry point.

Nothing is imported here: `leantune.training.signals` (which the CLI needs on every command) must not pull in
torch."""
