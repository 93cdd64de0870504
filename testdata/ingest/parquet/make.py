"""Writes the Parquet fixtures of ft-ingest's tests with pyarrow (an implementation independent of
the Rust `parquet` crate): python3 -m pip install pyarrow==26.0.1; python3 make.py

- hf.parquet: snappy (pyarrow's default, as on the Hugging Face hub), two row groups, a null text,
  a struct, a list with a null element, a map; hf.rows.json: the rows as pyarrow reads them back.
- gzip.parquet: gzip pages, a codec ft-ingest does not read (skipped as unreadable).
"""
import json
import pyarrow as pa
import pyarrow.parquet as pq

rows = [
    {"text": "Paris is the capital of France.", "id": 7, "info": {"year": 2020, "author": "ann"},
     "tags": ["geo", "fr"], "attrs": [("lang", "en")]},
    {"text": None, "id": 8, "info": None, "tags": None, "attrs": None},
    {"text": "Rust is a systems language.", "id": 9, "info": {"year": 1999, "author": None},
     "tags": [None, "code"], "attrs": []},
]
schema = pa.schema([
    ("text", pa.string()),
    ("id", pa.int64()),
    ("info", pa.struct([("year", pa.int32()), ("author", pa.string())])),
    ("tags", pa.list_(pa.string())),
    ("attrs", pa.map_(pa.string(), pa.string())),
])
table = pa.Table.from_pylist(rows, schema=schema)
pq.write_table(table, "hf.parquet", row_group_size=2, compression="snappy")
back = pq.read_table("hf.parquet").to_pylist()
for r in back:
    if r["attrs"] is not None:
        r["attrs"] = dict(r["attrs"])
with open("hf.rows.json", "w") as f:
    json.dump(back, f, indent=1)
    f.write("\n")
pq.write_table(pa.Table.from_pylist([{"text": "hello"}]), "gzip.parquet", compression="gzip")
