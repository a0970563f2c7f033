"""Reads one sfsync archive file with pyarrow and prints what a standard reader sees, as JSON:
row count, columns (name, type, nullable), the compression codecs of the column chunks, the
file's key-value metadata (without Arrow's own schema entry) and each row's offset, event key,
replay id, payload (hex), sealed flag and timestamps (epoch ms).

Usage: read_archive.py FILE.parquet
"""

import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq


def main() -> None:
    path = sys.argv[1]
    pf = pq.ParquetFile(path)
    meta = pf.metadata
    table = pf.read()
    codecs = sorted(
        {
            meta.row_group(g).column(c).compression
            for g in range(meta.num_row_groups)
            for c in range(meta.num_columns)
        }
    )
    kv = {
        k.decode(): v.decode()
        for k, v in (meta.metadata or {}).items()
        if not k.startswith(b"ARROW:")
    }
    commit_ms = table.column("commit_timestamp").cast(pa.int64()).to_pylist()
    appended_ms = table.column("appended_at").cast(pa.int64()).to_pylist()
    rows = []
    for i, r in enumerate(table.to_pylist()):
        rows.append(
            {
                "offset": r["log_offset"],
                "event_key": r["event_key"],
                "replay_id_hex": r["replay_id"].hex(),
                "payload_hex": r["payload"].hex(),
                "sealed": r["payload_sealed"],
                "commit_ms": commit_ms[i],
                "appended_ms": appended_ms[i],
            }
        )
    print(
        json.dumps(
            {
                "num_rows": table.num_rows,
                "row_groups": meta.num_row_groups,
                "columns": [[f.name, str(f.type), f.nullable] for f in table.schema],
                "codecs": codecs,
                "metadata": kv,
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
