"""The paper's case studies, one module each (config, presets, run), on a shared study layer."""
