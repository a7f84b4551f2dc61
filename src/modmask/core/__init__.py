"""The masking library: imports torch (and safetensors, numpy, tqdm) only, never the layers above."""
