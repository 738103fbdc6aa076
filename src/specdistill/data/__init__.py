"""Data: records and readers, prompt views, collation, built-in tasks and the built-in tokenizer."""

from .records import DataError, Problem, Record, check_file, load_records, read_rows
from .tasks import Task, get_task, load_task
from .tokenizer import build_tokenizer
from .prompt_views import Example, PromptBatch, collate, encode_example, left_pad, right_pad, view_messages

__all__ = [
    "DataError", "Example", "Problem", "PromptBatch", "Record", "Task", "build_tokenizer", "check_file",
    "collate", "encode_example", "get_task", "left_pad", "load_records", "load_task", "read_rows", "right_pad",
    "view_messages",
]
