"""`medrt serve` as a process: SIGHUP reloads the key file, SIGTERM drains (health turns
NOT_SERVING, new requests get UNAVAILABLE, the running request finishes) and the process
exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import medrt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from medrt.serve.auth import add_key
from medrt.v1 import medrt_pb2, medrt_pb2_grpc

READY_TIMEOUT_S = 90


class ServeProcess:
    def __init__(self, args: list[str]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(medrt.__file__).parent.parent), env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen([sys.executable, "-m", "medrt", "serve", *args],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     text=True, env=env)
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.info: dict = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") == "ready":
                self.info = rec
                self.ready.set()

    def wait_ready(self) -> None:
        if not self.ready.wait(READY_TIMEOUT_S):
            self.proc.kill()
            raise AssertionError("server not ready:\n" + "".join(self.lines))


def test_sighup_reload_and_sigterm_drain(medium_llama: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    key = add_key("ward7", keys)
    sp = ServeProcess(["--model", str(medium_llama), "--grpc-port", "0", "--http-port", "-1",
                       "--threads", "1", "--max-model-len", "1024", "--api-keys", str(keys),
                       "--drain-grace-s", "60", "--log-json"])
    try:
        sp.wait_ready()
        assert sp.info["message"].startswith("model m ready")
        target = f"127.0.0.1:{sp.info['grpc_port']}"
        with grpc.insecure_channel(target) as ch:
            stub = medrt_pb2_grpc.MedrtStub(ch)
            health = health_pb2_grpc.HealthStub(ch)
            auth = (("authorization", f"Bearer {key}"),)
            # SIGHUP: a key added to the file works without a restart
            new = add_key("pharmacy", keys)
            sp.proc.send_signal(signal.SIGHUP)
            for _ in range(500):
                try:
                    stub.Generate(medrt_pb2.GenerateRequest(prompt="hi"), timeout=10,
                                  metadata=(("authorization", f"Bearer {new}"),))
                    break
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.UNAUTHENTICATED
                    time.sleep(0.02)
            else:
                raise AssertionError("the new key never worked after SIGHUP")

            long = medrt_pb2.GenerateRequest(prompt="The patient", sampling=medrt_pb2.SamplingParams(
                max_tokens=1000, temperature=0, ignore_eos=True))
            stream = stub.GenerateStream(long, metadata=auth, timeout=120)
            got = list(next(stream).token_ids)
            sp.proc.send_signal(signal.SIGTERM)
            # draining: NOT_SERVING and UNAVAILABLE (or, once drained, the port is closed:
            # UNAVAILABLE too)
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
                assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.RpcError) as info:
                stub.Generate(medrt_pb2.GenerateRequest(prompt="hi"), metadata=auth, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            last = None
            for msg in stream:  # the running request finishes
                got.extend(msg.token_ids)
                last = msg
            assert len(got) == 1000 and last.finish_reason == "length"
        assert sp.proc.wait(timeout=60) == 0
        assert any('"stopped"' in line for line in sp.lines)
    finally:
        if sp.proc.poll() is None:
            sp.proc.kill()
            sp.proc.wait()


def test_not_serving_until_loaded(tiny_llama: Path) -> None:
    import aiohttp
    from medrt.serve.server import ServeConfig, Server

    async def run() -> None:
        server = Server(ServeConfig(model=str(tiny_llama), grpc_port=0, http_port=0,
                                    num_threads=1, max_model_len=256))
        await server.start()  # ports open, the model loads in the background
        target = f"127.0.0.1:{server.grpc_port}"
        async with grpc.aio.insecure_channel(target) as ch, aiohttp.ClientSession() as http:
            health = health_pb2_grpc.HealthStub(ch)
            stub = medrt_pb2_grpc.MedrtStub(ch)
            resp = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Generate(medrt_pb2.GenerateRequest(prompt="hi"), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            async with http.get(f"http://127.0.0.1:{server.http_port}/health") as r:
                assert r.status == 503 and (await r.json())["status"] == "loading"
            await server.wait_ready(60)
            resp = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
            async with http.get(f"http://127.0.0.1:{server.http_port}/health") as r:
                assert r.status == 200
        server.begin_drain()
        await asyncio.wait_for(server.wait_stopped(), 30)

    asyncio.run(run())
