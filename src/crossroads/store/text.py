"""Text the databases can store: NUL and lone surrogates replaced before anything is bound.

PostgreSQL's `text` refuses NUL ("invalid byte sequence for encoding UTF8: 0x00"), and a Python str holding a lone
surrogate (U+D800..U+DFFF: a bad ``\\ud800`` escape, undecodable bytes read with ``surrogateescape`` such as command
line arguments) cannot be encoded to UTF-8 by either driver. PostgreSQL's `json` stores ``\\u0000`` and lone-surrogate
escapes but then cannot extract them as text (``->>`` fails), so JSON values are cleaned the same way. Each such
character becomes U+FFFD (the replacement character): the value stays readable and its length and position are kept,
and a write never fails over it.

The checks cost almost nothing for ordinary text: `str.isascii()` is a flag read in CPython, so only non-ASCII strings
are searched for surrogates, and NUL is a single `in` test.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
import sqlalchemy as sa

from crossroads.store.rows import GENERATION_COLUMNS, JSON_COLUMNS, GenerationRecord
from crossroads.store.schema import generations

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")


def is_clean(text: str) -> bool:
    return "\x00" not in text and (text.isascii() or _SURROGATE.search(text) is None)


def clean_text(text: str) -> str:
    """`text` with NUL and lone surrogates replaced by U+FFFD (the same object when there is nothing to replace)."""
    if is_clean(text):
        return text
    text = text.replace("\x00", REPLACEMENT)
    if not text.isascii() and _SURROGATE.search(text) is not None:
        # A high surrogate followed by a low one is a character spelt in two halves (UTF-16): joined back into it.
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def clean_value(value: Any) -> Any:
    """A JSON-like value (str, list, tuple, dict, scalars) with every string in it (keys included) cleaned."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(k) if isinstance(k, str) else k: clean_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_value(item) for item in value]
    return value


def clean_json_text(text: str) -> str:
    """JSON text whose strings hold no NUL or lone surrogate, raw or escaped (``\\u0000``, ``\\ud800``)."""
    if "\\u" not in text and is_clean(text):
        return text  # nothing escaped at all: the common case
    lowered = text.lower()
    if "\\u0000" not in lowered and "\\ud" not in lowered and is_clean(text):
        return text
    try:
        value = json.loads(text)  # the stdlib parser keeps lone surrogates (orjson refuses them), so they can be cleaned
    except ValueError:
        return clean_text(text)
    return orjson.dumps(clean_value(value)).decode()


def dumps(value: Any) -> str:
    """The JSON serializer of the store's engines (every JSON column): compact, UTF-8, cleaned as above."""
    try:
        text = orjson.dumps(value).decode()  # raises on a lone surrogate; NUL comes out escaped
    except TypeError:  # a lone surrogate, an integer beyond 64 bits, a type orjson does not know
        return _dumps_slowly(clean_value(value))
    return text if "\\u0000" not in text else _dumps_slowly(clean_value(value))


def _dumps_slowly(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# Where a generation record (rows.GenerationRecord) holds text: the string columns, and the JSON columns as JSON text.
_RECORD_TEXT = tuple(GENERATION_COLUMNS.index(c.name) for c in generations.columns
                     if isinstance(c.type, sa.String) and c.name not in JSON_COLUMNS)
_RECORD_JSON = tuple(GENERATION_COLUMNS.index(name) for name in JSON_COLUMNS)


def clean_record(record: GenerationRecord) -> GenerationRecord:
    """The record itself when its text is clean (the common case: a few flag reads per column), else a cleaned copy."""
    for index in _RECORD_TEXT:
        value = record[index]
        if value is not None and ("\x00" in value or not value.isascii() and _SURROGATE.search(value) is not None):
            break
    else:
        for index in _RECORD_JSON:
            value = record[index]
            if value is not None and ("\\u" in value or not is_clean(value)):
                break
        else:
            return record
    values = list(record)
    for index in _RECORD_TEXT:
        if isinstance(values[index], str):
            values[index] = clean_text(values[index])
    for index in _RECORD_JSON:
        if isinstance(values[index], str):
            values[index] = clean_json_text(values[index])
    return tuple(values)


def clean_records(records: list[GenerationRecord]) -> list[GenerationRecord]:
    return [clean_record(record) for record in records]
