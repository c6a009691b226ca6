"""Models: loading a base (HF directory, .gguf, bundled name), its 4-bit form, adapters, the label-only forward
pass and the loader of finished runs for inference. Import the modules themselves (models.loading, ...): this
package imports nothing, so the verbs that touch no model never load torch through it."""
