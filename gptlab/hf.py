"""GPT-2 weights in and out: Hugging Face folders, the HF cache, and `gptlab export --to hf`. The way in
(reading and converting HF's weights) is hf_import, the way out hf_export; this module names both, so
callers use one `hf`."""

from __future__ import annotations

from gptlab.hf_export import (
    ENDOFTEXT,
    EXPORT_FORMAT,
    EXPORT_MARKER,
    check_export_target,
    export_hf,
    gpt2_gaps,
    gpt2_tensors,
    gpt2_tokenizer_files,
    main_export,
)
from gptlab.hf_import import (
    CONV1D_SUFFIXES,
    GELU_NAMES,
    PRETRAINED,
    TANH_GELUS,
    WEIGHT_FILES,
    convert_hf_state,
    find_in_cache,
    gpt_from_pretrained,
    hf_cache_dir,
    load_gpt2_state,
    overrides_from_hf_config,
    read_weights,
    resolve_pretrained,
)

__all__ = ["CONV1D_SUFFIXES", "ENDOFTEXT", "EXPORT_FORMAT", "EXPORT_MARKER", "GELU_NAMES", "PRETRAINED",
           "TANH_GELUS", "WEIGHT_FILES", "check_export_target", "convert_hf_state", "export_hf",
           "find_in_cache", "gpt2_gaps", "gpt2_tensors", "gpt2_tokenizer_files", "gpt_from_pretrained",
           "hf_cache_dir", "load_gpt2_state", "main_export", "overrides_from_hf_config", "read_weights",
           "resolve_pretrained"]
