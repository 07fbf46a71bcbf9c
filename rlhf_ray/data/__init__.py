"""Data in every form a run reads: the batch format every layer exchanges (batch), offline training data
(files → rows → tokenized units: files, formats, preference), online prompt sets (prompts) and the chat
template both apply (chat), generated rows (synthetic pairs, tool-use SFT traces)."""

from rlhf_ray.data.files import DataError, Table, read_table
from rlhf_ray.data.formats import TextExample, detect_format, hh_messages, parse_label, split_hh, text_examples
from rlhf_ray.data.preference import Encoded, Encoder, Unit, collate, encode, load_offline_data, split_table

__all__ = ["DataError", "Table", "read_table", "TextExample", "detect_format", "hh_messages", "parse_label",
           "split_hh", "text_examples", "Encoded", "Encoder", "Unit", "collate", "encode", "load_offline_data",
           "split_table"]
