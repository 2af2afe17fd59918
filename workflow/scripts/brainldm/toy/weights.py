"""Where the trained toy weights live and which files they are (no torch: the Snakefile reads it)."""

from pathlib import Path

#: The trained toy weights that ship with the workflow (written by brainldm.toy.training).
SHIPPED_WEIGHTS = Path(__file__).resolve().parents[3] / "toy_model"
MANIFEST = "manifest.json"
#: Files of a weights folder, by role; their sha256 are in the manifest.
WEIGHT_FILES = {
    "vae": "vae.safetensors",
    "text_encoder": "text_encoder.safetensors",
    "unet": "unet.safetensors",
    "semantic": "semantic.safetensors",
    "vocab": "tokenizer/vocab.json",
    "merges": "tokenizer/merges.txt",
}
