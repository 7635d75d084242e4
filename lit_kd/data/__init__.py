"""Data: Dolly-format instruction records, the prompt template, tokenization and the DataModule."""

from lit_kd.data.collate import PadCollator
from lit_kd.data.dolly import DollyDataModule, split_records
from lit_kd.data.prompt import format_prompt
from lit_kd.data.records import DataFormatError, load_records
from lit_kd.data.tokenize import IGNORE_INDEX, TokenizedSplit, encode_example, tokenize_records

__all__ = [
    "IGNORE_INDEX",
    "DataFormatError",
    "DollyDataModule",
    "PadCollator",
    "TokenizedSplit",
    "encode_example",
    "format_prompt",
    "load_records",
    "split_records",
    "tokenize_records",
]
