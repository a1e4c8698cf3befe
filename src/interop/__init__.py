"""Models in other libraries' formats, in and out (``hf_yoso``: ``transformers``' YOSO)."""

from src.interop.hf_yoso import export_hf_yoso, load_hf_tokenizer, load_hf_yoso

__all__ = ["export_hf_yoso", "load_hf_tokenizer", "load_hf_yoso"]
