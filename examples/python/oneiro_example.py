#!/usr/bin/env python3
"""A Python client of the Oneiro daemon, generated from proto/ with grpcio-tools.

Trains a small character model on a generated corpus through a Train stream, generates
from it, and checks what comes back. Usage:

    oneiro_example.py ENDPOINT [TOKEN]      # e.g. 127.0.0.1:50051

Needs `pip install grpcio grpcio-tools`. Exits non-zero if anything is wrong.
"""
import importlib
import os
import sys
import tempfile

from grpc_tools import protoc
import grpc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_stubs():
    """Compiles oneiro.proto into a temporary package and imports it."""
    out = tempfile.mkdtemp(prefix="oneiro-py-")
    proto_dir = os.path.join(ROOT, "proto")
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
                      os.path.join(proto_dir, "oneiro", "v1", "oneiro.proto")])
    if rc != 0:
        raise SystemExit(f"protoc failed with {rc}")
    for d in ("oneiro", os.path.join("oneiro", "v1")):
        open(os.path.join(out, d, "__init__.py"), "a").close()
    sys.path.insert(0, out)
    return importlib.import_module("oneiro.v1.oneiro_pb2"), importlib.import_module("oneiro.v1.oneiro_pb2_grpc")


def main():
    endpoint = sys.argv[1]
    token = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("ONEIRO_TOKEN")
    pb, rpc = load_stubs()
    metadata = [("authorization", f"Bearer {token}")] if token else []
    stub = rpc.OneiroStub(grpc.insecure_channel(endpoint))

    info = stub.Info(pb.InfoRequest(), metadata=metadata)
    print(f"daemon {info.version} on {info.device}, queue depth {info.limits.queue_depth}")

    corpus = "the quick brown fox jumps over the lazy dog. " * 60
    request = pb.TrainRequest(
        model="python-fox",
        create_if_missing=True,
        char_lstm=pb.CharLstmConfig(maxlen=16, step=1, hidden=32),
        options=pb.TrainOptions(epochs=6, batch_size=32, seed=7, sample_temperatures=[0.2], sample_length=40),
        text=pb.TextCorpus(text=corpus),
    )
    job_id, epochs, finished = None, [], None
    for event in stub.Train(request, metadata=metadata):
        kind = event.WhichOneof("event")
        if kind == "accepted":
            job_id = event.job_id
            print(f"job {job_id} accepted")
        elif kind == "epoch_end":
            epochs.append(event.epoch_end.loss)
            print(f"epoch {event.epoch_end.epoch}: loss {event.epoch_end.loss:.4f}")
        elif kind == "sample":
            print(f"  sample at T={event.sample.temperature:.1f}: {event.sample.text!r}")
        elif kind == "finished":
            finished = event.finished
    assert job_id, "no job id"
    assert finished is not None and finished.epochs_trained == 6, finished
    assert epochs[-1] < epochs[0] / 10, f"the loss did not fall: {epochs}"

    text = "".join(chunk.text for chunk in stub.Generate(
        pb.GenerateRequest(model="python-fox", seed_text="the quick brown ", temperature=0.0, length=30),
        metadata=metadata))
    print(f"greedy continuation: {text!r}")
    assert text.startswith("fox jumps over the lazy dog."), text

    try:
        next(iter(stub.Generate(pb.GenerateRequest(model="python-fox", seed_text="the", temperature=-1.0, length=5),
                                metadata=metadata)))
        raise AssertionError("a negative temperature was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        print(f"negative temperature refused: {e.details()}")

    jobs = stub.ListJobs(pb.ListJobsRequest(), metadata=metadata).jobs
    assert any(j.job_id == job_id and j.state == pb.JOB_STATE_FINISHED for j in jobs), jobs
    stub.DeleteModel(pb.DeleteModelRequest(name="python-fox"), metadata=metadata)
    print("python client: 1 passed, 0 failed")


if __name__ == "__main__":
    main()
