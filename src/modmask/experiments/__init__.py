"""The paper's case studies, one module each (Config, PRESETS, DESCRIPTION, run), and their shared
helpers (pretrain, seq2seq). They train their masks through the runs layer (runs.stage, runs.study);
launch/ names, runs and sweeps them."""
