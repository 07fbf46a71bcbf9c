"""Offline training data: files → rows → tokenized units → batches."""

from rlhf_ray.data.files import DataError, Table, read_table
from rlhf_ray.data.formats import TextExample, detect_format, hh_messages, parse_label, split_hh, text_examples
from rlhf_ray.data.preference import Encoded, Encoder, Unit, collate, encode, load_offline_data, split_table

__all__ = ["DataError", "Table", "read_table", "TextExample", "detect_format", "hh_messages", "parse_label",
           "split_hh", "text_examples", "Encoded", "Encoder", "Unit", "collate", "encode", "load_offline_data",
           "split_table"]
