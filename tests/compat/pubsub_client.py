#!/usr/bin/env python3
"""Third-party-style Salesforce Pub/Sub subscriber used to check the sfsync emulator.

Does what widely used Python Pub/Sub clients do: generates gRPC stubs from the Pub/Sub .proto
with grpcio-tools, connects over TLS trusting the emulator's CA, authenticates with the
accesstoken/instanceurl/tenantid metadata, subscribes with flow control, decodes each payload with
the `avro` library using the writer schema from GetSchema, then resumes from the last replay id
(CUSTOM preset). Prints one JSON document with the decoded events of both phases.

Usage: pubsub_client.py --proto PATH --address HOST:PORT --ca CA.pem --token T --instance-url U
                        --tenant ORGID --topic /data/AccountChangeEvent --first N --total M
"""
import argparse
import io
import json
import os
import queue
import sys
import tempfile
import threading


def stubs(proto_path):
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="pubsub_stubs_")
    proto_dir = os.path.dirname(os.path.abspath(proto_path))
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main([
        "protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
        os.path.basename(proto_path),
    ])
    if rc != 0:
        raise SystemExit(f"protoc failed with {rc} for {proto_path}")
    sys.path.insert(0, out)
    import pubsub_api_pb2 as pb2
    import pubsub_api_pb2_grpc as pb2_grpc
    return pb2, pb2_grpc


def main():
    ap = argparse.ArgumentParser()
    for a in ["proto", "address", "ca", "token", "instance-url", "tenant", "topic"]:
        ap.add_argument(f"--{a}", required=True)
    ap.add_argument("--first", type=int, required=True)
    ap.add_argument("--total", type=int, required=True)
    args = ap.parse_args()

    import grpc
    import avro.io
    import avro.schema

    pb2, pb2_grpc = stubs(args.proto)
    with open(args.ca, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    channel = grpc.secure_channel(args.address, creds, options=[("grpc.ssl_target_name_override", "localhost")])
    stub = pb2_grpc.PubSubStub(channel)
    # Mixed case on purpose: gRPC lower-cases keys, the server must match case-insensitively.
    metadata = (("accesstoken", args.token), ("instanceurl", args.instance_url), ("tenantid", args.tenant))

    topic = stub.GetTopic(pb2.TopicRequest(topic_name=args.topic), metadata=metadata)
    if not topic.can_subscribe:
        raise SystemExit("topic not subscribable")
    schemas = {}

    def decode(ev):
        sid = ev.event.schema_id
        if sid not in schemas:
            info = stub.GetSchema(pb2.SchemaRequest(schema_id=sid), metadata=metadata)
            schemas[sid] = avro.schema.parse(info.schema_json)
        reader = avro.io.DatumReader(schemas[sid])
        rec = reader.read(avro.io.BinaryDecoder(io.BytesIO(ev.event.payload)))
        h = rec["ChangeEventHeader"]
        return {
            "replay_id": ev.replay_id.hex(),
            "replay_int": int.from_bytes(ev.replay_id, "big"),
            "schema_id": sid,
            "entityName": h["entityName"],
            "changeType": h["changeType"],
            "recordIds": h["recordIds"],
            "changeOrigin": h["changeOrigin"],
            "changedFields": h["changedFields"],
            "nulledFields": h["nulledFields"],
            "Name": rec.get("Name"),
            "BillingAddress": rec.get("BillingAddress"),
            "CreatedDate": rec.get("CreatedDate"),
        }

    def run(preset, replay_id, want):
        q = queue.Queue()
        q.put(pb2.FetchRequest(topic_name=args.topic, replay_preset=preset, replay_id=replay_id,
                               num_requested=min(want, 100)))
        stop = threading.Event()

        def requests():
            while not stop.is_set():
                try:
                    yield q.get(timeout=0.1)
                except queue.Empty:
                    continue

        call = stub.Subscribe(requests(), metadata=metadata, timeout=30)
        got = []
        try:
            for resp in call:
                for ev in resp.events:
                    got.append(decode(ev))
                if len(got) >= want:
                    break
                if resp.pending_num_requested == 0:
                    q.put(pb2.FetchRequest(num_requested=min(want - len(got), 100)))
        finally:
            stop.set()
            call.cancel()
        return got

    first = run(pb2.ReplayPreset.EARLIEST, b"", args.first)
    last = bytes.fromhex(first[-1]["replay_id"])
    rest = run(pb2.ReplayPreset.CUSTOM, last, args.total - args.first)
    print(json.dumps({"topic": topic.topic_name, "schema_id": topic.schema_id, "first": first, "rest": rest}))


if __name__ == "__main__":
    main()
