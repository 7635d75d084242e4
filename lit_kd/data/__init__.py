"""Data: instruction records and conversations, their renderings (the Dolly template, each model's chat template),
tokenization and the DataModule."""

from lit_kd.data.chat_template import ChatRendering
from lit_kd.data.collate import PadCollator
from lit_kd.data.dolly import DollyDataModule, split_records
from lit_kd.data.prompt import format_prompt
from lit_kd.data.records import DataFormatError, load_records
from lit_kd.data.rendering import DollyRendering, make_rendering
from lit_kd.data.tokenize import IGNORE_INDEX, encode_example
from lit_kd.data.tokenized import TokenizedSplit, tokenize_records

__all__ = [
    "IGNORE_INDEX",
    "ChatRendering",
    "DataFormatError",
    "DollyDataModule",
    "DollyRendering",
    "PadCollator",
    "TokenizedSplit",
    "encode_example",
    "format_prompt",
    "load_records",
    "make_rendering",
    "split_records",
    "tokenize_records",
]
