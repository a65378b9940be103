#!/usr/bin/python3
"""A Python client generated from proto/ drives every call of sbx.v1.

Run with Debian's /usr/bin/python3 (python3-grpcio, python3-protobuf):

    /usr/bin/python3 tests/python/client_test.py BUILD/sandboxd/test_sandboxd

or with the daemon in $SBX_TEST_SANDBOXD. The stubs are generated into a
temporary directory by protoc and grpc_python_plugin (protobuf-compiler-grpc),
exactly as a user would; the daemon is test_sandboxd (the real services and
manager, each "VM" a real sbx-agent on this host: guest paths are host paths).
Health and reflection are spoken through small .proto subsets written below,
since Debian ships no grpc_health / grpc_reflection Python modules.

Exit status: 0 passed, 1 failed, 77 skipped (a missing package, outside CI;
under CI=true that is a failure). See tests/python/README.md.
"""

import importlib
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

SKIP = 77
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTOC = "/usr/bin/protoc"
GRPC_PLUGIN = "/usr/bin/grpc_python_plugin"
RPC_TIMEOUT = 30  # seconds, for every call

# Written here rather than copied: the fields these tests use, with the
# upstream package names and field numbers (grpc/health/v1/health.proto,
# grpc/reflection/v1alpha/reflection.proto).
HEALTH_PROTO = """
syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health { rpc Check(HealthCheckRequest) returns (HealthCheckResponse); }
"""

REFLECTION_PROTO = """
syntax = "proto3";
package grpc.reflection.v1alpha;
service ServerReflection {
  rpc ServerReflectionInfo(stream ServerReflectionRequest)
      returns (stream ServerReflectionResponse);
}
message ServerReflectionRequest {
  string host = 1;
  oneof message_request {
    string file_containing_symbol = 4;
    string list_services = 7;
  }
}
message ServerReflectionResponse {
  string valid_host = 1;
  ServerReflectionRequest original_request = 2;
  oneof message_response {
    FileDescriptorResponse file_descriptor_response = 4;
    ListServiceResponse list_services_response = 6;
    ErrorResponse error_response = 7;
  }
}
message FileDescriptorResponse { repeated bytes file_descriptor_proto = 1; }
message ListServiceResponse { repeated ServiceResponse service = 1; }
message ServiceResponse { string name = 1; }
message ErrorResponse { int32 error_code = 1; string error_message = 2; }
"""


def facility_missing(reason):
    """The project's rule (base/test_facility.h): skip with the reason;
    under CI=true a missing package scripts/setup installs is a failure."""
    if os.environ.get("CI") == "true":
        print("FAILED: CI=true, and this test's facility is missing: " + reason)
        sys.exit(1)
    print("SKIPPED: " + reason)
    sys.exit(SKIP)


def check_facilities():
    missing = []
    for module, package in (("grpc", "python3-grpcio"),
                            ("google.protobuf", "python3-protobuf")):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    for tool, package in ((PROTOC, "protobuf-compiler"),
                          (GRPC_PLUGIN, "protobuf-compiler-grpc")):
        if not os.access(tool, os.X_OK):
            missing.append(package)
    if missing:
        facility_missing("%s lacks %s (scripts/setup installs them; run this test "
                         "with /usr/bin/python3)" % (sys.executable, " ".join(missing)))


def generate_stubs(out):
    """protoc + grpc_python_plugin, as a user of the API would run them."""
    local = os.path.join(out, "local_protos")
    # Top-level file names: the installed grpc package owns the module
    # name "grpc", so grpc/health/v1/health_pb2.py could not be imported.
    for rel, text in (("grpc_health_v1.proto", HEALTH_PROTO),
                      ("grpc_reflection_v1alpha.proto", REFLECTION_PROTO)):
        os.makedirs(os.path.dirname(os.path.join(local, rel)), exist_ok=True)
        with open(os.path.join(local, rel), "w") as f:
            f.write(text)
    gen = os.path.join(out, "gen")
    os.makedirs(gen)
    for include, files in (
            (os.path.join(ROOT, "proto"), ["sbx/v1/sandbox.proto"]),
            (local, ["grpc_health_v1.proto", "grpc_reflection_v1alpha.proto"])):
        cmd = [PROTOC, "--python_out=" + gen, "--grpc_out=" + gen,
               "--plugin=protoc-gen-grpc=" + GRPC_PLUGIN,
               "-I", include, "-I", "/usr/include"] + files
        subprocess.run(cmd, check=True, cwd=ROOT)
    sys.path.insert(0, gen)


# Filled in by main() once the facilities are known to be there.
grpc = None
pb = pb_grpc = health_pb = health_grpc = refl_pb = refl_grpc = None
duration_pb2 = None


def import_stubs():
    global grpc, pb, pb_grpc, health_pb, health_grpc, refl_pb, refl_grpc, duration_pb2
    import grpc as grpc_module
    from google.protobuf import duration_pb2 as d
    grpc = grpc_module
    duration_pb2 = d
    pb = importlib.import_module("sbx.v1.sandbox_pb2")
    pb_grpc = importlib.import_module("sbx.v1.sandbox_pb2_grpc")
    health_pb = importlib.import_module("grpc_health_v1_pb2")
    health_grpc = importlib.import_module("grpc_health_v1_pb2_grpc")
    refl_pb = importlib.import_module("grpc_reflection_v1alpha_pb2")
    refl_grpc = importlib.import_module("grpc_reflection_v1alpha_pb2_grpc")


class CallRecorder:
    """A client interceptor of every kind: records the methods called, so
    the run can prove it drove every RPC of both services."""

    def __init__(self):
        self.methods = set()

    def _record(self, details):
        self.methods.add(details.method)

    def intercept_unary_unary(self, continuation, details, request):
        self._record(details)
        return continuation(details, request)

    def intercept_unary_stream(self, continuation, details, request):
        self._record(details)
        return continuation(details, request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        self._record(details)
        return continuation(details, request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        self._record(details)
        return continuation(details, request_iterator)


def make_recorder_class():
    return type("Recorder", (CallRecorder, grpc.UnaryUnaryClientInterceptor,
                             grpc.UnaryStreamClientInterceptor,
                             grpc.StreamUnaryClientInterceptor,
                             grpc.StreamStreamClientInterceptor), {})


RECORDER = None


class Daemon:
    """One test_sandboxd on a unix socket in its own temporary directory."""

    def __init__(self, binary, token=None):
        self.dir = tempfile.mkdtemp(prefix="sbxpy", dir="/tmp")
        self.socket = os.path.join(self.dir, "sandboxd.sock")
        self.address = "unix://" + self.socket
        self.log_path = os.path.join(self.dir, "test_sandboxd.log")
        cmd = [binary, "--listen", self.address, "--state-dir", self.dir]
        if token:
            cmd += ["--token", token]
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self.channel = None  # once it listens (wait_serving)

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def wait_serving(self, timeout=30):
        """Polls grpc.health.v1.Health/Check until the server says SERVING."""
        deadline = time.monotonic() + timeout
        # A channel that tried before the socket existed stays in reconnect
        # backoff for seconds: connect once by hand first.
        while not self.listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("test_sandboxd never listened on %s (exit %s):\n%s"
                                     % (self.socket, self.proc.poll(), self.log_text()))
            time.sleep(0.05)
        self.channel = grpc.insecure_channel(self.address)
        stub = health_grpc.HealthStub(self.channel)
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("test_sandboxd exited with %s:\n%s"
                                     % (self.proc.returncode, self.log_text()))
            try:
                r = stub.Check(health_pb.HealthCheckRequest(service=""), timeout=2)
                if r.status == health_pb.HealthCheckResponse.SERVING:
                    return
                last = r
            except grpc.RpcError as e:
                last = e
            time.sleep(0.1)
        raise AssertionError("test_sandboxd not SERVING after %ss (last: %s):\n%s"
                             % (timeout, last, self.log_text()))

    def listening(self):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(self.socket)
                return True
            except OSError:
                return False

    def agent_pids(self):
        """sbx-agents ("VMs") serving from this daemon's directory."""
        pids = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if any(a.startswith(b"unix:" + self.dir.encode()) for a in argv):
                pids.append(int(pid))
        return pids

    def stop(self):
        """SIGTERM; returns the exit status (the daemon must stop by itself)."""
        if self.channel is not None:
            self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.log.close()
                return "timeout"
        self.log.close()
        return self.proc.returncode

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


DAEMON_BINARY = None
DAEMON = None


def setUpModule():
    global DAEMON
    DAEMON = Daemon(DAEMON_BINARY)
    DAEMON.wait_serving()


def tearDownModule():
    had_vms = bool(DAEMON.agent_pids())
    status = DAEMON.stop()
    left = DAEMON.agent_pids()
    log = DAEMON.log_text()
    DAEMON.cleanup()
    if status != 0:
        raise AssertionError("test_sandboxd did not stop cleanly on SIGTERM (%s):\n%s"
                             % (status, log))
    if left:
        raise AssertionError("fake VMs (sbx-agent) still running after SIGTERM: %s "
                             "(had VMs before: %s)" % (left, had_vms))


def dur(seconds):
    return duration_pb2.Duration(seconds=seconds)


class ApiTest(unittest.TestCase):
    """Every call over the generated stubs, against one daemon."""

    @classmethod
    def setUpClass(cls):
        channel = grpc.intercept_channel(DAEMON.channel, RECORDER)
        cls.sandboxes = pb_grpc.SandboxesStub(channel)
        cls.templates = pb_grpc.TemplatesStub(channel)

    def create(self, **kwargs):
        s = self.sandboxes.Create(pb.CreateSandboxRequest(**kwargs), timeout=RPC_TIMEOUT)
        self.addCleanup(self.delete_quietly, s.id)
        return s

    def delete_quietly(self, sandbox_id):
        try:
            self.sandboxes.Delete(pb.DeleteSandboxRequest(id=sandbox_id), timeout=RPC_TIMEOUT)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise

    def assertCode(self, code, fn, *args, **kwargs):
        with self.assertRaises(grpc.RpcError) as cm:
            result = fn(*args, timeout=RPC_TIMEOUT, **kwargs)
            if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
                list(result)  # a stream's status comes at its end
        self.assertEqual(cm.exception.code(), code, cm.exception.details())
        self.assertTrue(cm.exception.details(), "an error says why")
        return cm.exception

    def exec(self, **kwargs):
        out, err, exited, started = b"", b"", None, None
        for e in self.sandboxes.Exec(pb.ExecRequest(**kwargs), timeout=RPC_TIMEOUT):
            kind = e.WhichOneof("event")
            if kind == "started":
                started = e.started
            elif kind == "stdout":
                out += e.stdout
            elif kind == "stderr":
                err += e.stderr
            elif kind == "exited":
                exited = e.exited
        return out, err, exited, started

    def scratch_dir(self):
        """A directory for "guest" paths: the fake VMs run on this host."""
        d = tempfile.mkdtemp(prefix="guest", dir=DAEMON.dir)
        return d

    # ---- server features ----

    def test_health_serving(self):
        r = health_grpc.HealthStub(DAEMON.channel).Check(
            health_pb.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT)
        self.assertEqual(r.status, health_pb.HealthCheckResponse.SERVING)

    def test_reflection_lists_and_describes_the_services(self):
        from google.protobuf import descriptor_pb2
        stub = refl_grpc.ServerReflectionStub(DAEMON.channel)
        requests = [refl_pb.ServerReflectionRequest(list_services=""),
                    refl_pb.ServerReflectionRequest(file_containing_symbol="sbx.v1.Sandboxes")]
        responses = list(stub.ServerReflectionInfo(iter(requests), timeout=RPC_TIMEOUT))
        self.assertEqual(len(responses), 2)
        names = {s.name for s in responses[0].list_services_response.service}
        self.assertTrue({"sbx.v1.Sandboxes", "sbx.v1.Templates", "grpc.health.v1.Health"}
                        <= names, names)
        # The descriptors a generic client (grpcurl) builds requests from.
        files = {}
        for raw in responses[1].file_descriptor_response.file_descriptor_proto:
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
            files[fd.name] = fd
        self.assertIn("sbx/v1/sandbox.proto", files, list(files))
        services = {s.name: {m.name for m in s.method}
                    for s in files["sbx/v1/sandbox.proto"].service}
        want = {s.name: {m.name for m in s.methods}
                for s in pb.DESCRIPTOR.services_by_name.values()}
        self.assertEqual(services, want)

    # ---- templates ----

    def test_templates_create_get_list_delete(self):
        progress = list(self.templates.Create(
            pb.CreateTemplateRequest(name="pyclient", vcpus=1, memory_mib=256, disk_mib=512),
            timeout=RPC_TIMEOUT))
        self.assertGreaterEqual(len(progress), 2, progress)
        self.assertTrue(all(p.step for p in progress[:-1]), progress)
        self.assertFalse(any(p.HasField("template") for p in progress[:-1]))
        last = progress[-1]
        self.assertTrue(last.HasField("template"), "the last message carries the template")
        self.assertEqual(last.template.name, "pyclient")
        self.assertEqual(last.template.state, pb.READY)
        self.assertEqual(last.template.memory_mib, 256)
        self.assertEqual(last.template.disk_mib, 512)

        got = self.templates.Get(pb.GetTemplateRequest(name="pyclient"), timeout=RPC_TIMEOUT)
        self.assertEqual(got.state, pb.READY)
        self.assertEqual(got.kernel, os.path.realpath(os.path.join(DAEMON.dir, "images/vmlinux")))
        names = [t.name for t in self.templates.List(pb.ListTemplatesRequest(),
                                                     timeout=RPC_TIMEOUT).templates]
        self.assertIn("pyclient", names)
        self.assertCode(grpc.StatusCode.ALREADY_EXISTS, self.templates.Create,
                        pb.CreateTemplateRequest(name="pyclient"))

        # A sandbox of it; while it exists the template cannot go.
        s = self.create(template="pyclient")
        self.assertEqual(s.template, "pyclient")
        self.assertEqual(s.memory_mib, 256)
        self.assertEqual(self.templates.Get(pb.GetTemplateRequest(name="pyclient"),
                                            timeout=RPC_TIMEOUT).sandboxes, 1)
        self.assertCode(grpc.StatusCode.FAILED_PRECONDITION, self.templates.Delete,
                        pb.DeleteTemplateRequest(name="pyclient"))
        self.sandboxes.Delete(pb.DeleteSandboxRequest(id=s.id), timeout=RPC_TIMEOUT)

        self.templates.Delete(pb.DeleteTemplateRequest(name="pyclient"), timeout=RPC_TIMEOUT)
        self.assertCode(grpc.StatusCode.NOT_FOUND, self.templates.Get,
                        pb.GetTemplateRequest(name="pyclient"))
        names = [t.name for t in self.templates.List(pb.ListTemplatesRequest(),
                                                     timeout=RPC_TIMEOUT).templates]
        self.assertNotIn("pyclient", names)
        self.assertCode(grpc.StatusCode.INVALID_ARGUMENT, self.templates.Create,
                        pb.CreateTemplateRequest(name="Bad/Name"))

    # ---- sandboxes ----

    def test_create_get_delete_with_idempotency(self):
        req = dict(env={"GREETING": "hi"}, labels={"owner": "py"},
                   idempotency_key="py-create-once")
        s = self.create(**req)
        self.assertRegex(s.id, r"^sb-[0-9a-f]{16}$")
        self.assertEqual(s.state, pb.RUNNING)
        self.assertEqual(s.template, "default")
        self.assertEqual(dict(s.labels), {"owner": "py"})
        self.assertTrue(s.created_at.seconds > 0)
        again = self.sandboxes.Create(pb.CreateSandboxRequest(**req), timeout=RPC_TIMEOUT)
        self.assertEqual(again.id, s.id, "a retried Create with the same key")

        got = self.sandboxes.Get(pb.GetSandboxRequest(id=s.id), timeout=RPC_TIMEOUT)
        self.assertEqual(got.id, s.id)
        self.assertEqual(got.state, pb.RUNNING)
        self.assertEqual(dict(got.labels), {"owner": "py"})
        self.assertIn("default", [t.name for t in self.templates.List(
            pb.ListTemplatesRequest(), timeout=RPC_TIMEOUT).templates])

        self.sandboxes.Delete(pb.DeleteSandboxRequest(id=s.id), timeout=RPC_TIMEOUT)
        self.assertCode(grpc.StatusCode.NOT_FOUND, self.sandboxes.Get,
                        pb.GetSandboxRequest(id=s.id))
        # The key is free again: a new sandbox.
        fresh = self.create(**req)
        self.assertNotEqual(fresh.id, s.id)

    def test_list_filters_by_label_and_pages(self):
        ids = sorted(self.create(labels={"suite": "paging", "n": str(i)}).id for i in range(3))
        self.create(labels={"suite": "other"})
        seen, token = [], ""
        for _ in range(10):
            r = self.sandboxes.List(pb.ListSandboxesRequest(
                labels={"suite": "paging"}, page_size=1, page_token=token), timeout=RPC_TIMEOUT)
            self.assertLessEqual(len(r.sandboxes), 1)
            seen += [s.id for s in r.sandboxes]
            token = r.next_page_token
            if not token:
                break
        self.assertEqual(seen, ids, "three pages of one, ordered by id")
        r = self.sandboxes.List(pb.ListSandboxesRequest(labels={"suite": "paging", "n": "1"}),
                                timeout=RPC_TIMEOUT)
        self.assertEqual([s.labels["n"] for s in r.sandboxes], ["1"])
        r = self.sandboxes.List(pb.ListSandboxesRequest(states=[pb.SLEEPING],
                                                        labels={"suite": "paging"}),
                                timeout=RPC_TIMEOUT)
        self.assertEqual(list(r.sandboxes), [])

    def test_exec_output_exit_code_and_env(self):
        s = self.create(env={"GREETING": "hello", "WHO": "sandbox"})
        out, err, exited, started = self.exec(
            sandbox_id=s.id, shell="echo $GREETING $WHO; echo oops >&2; exit 3")
        self.assertIsNotNone(started)
        self.assertGreater(started.pid, 0)
        self.assertEqual(out, b"hello sandbox\n")
        self.assertEqual(err, b"oops\n")
        self.assertEqual(exited.exit_code, 3)
        # An exec's own env wins; argv, stdin and cwd.
        out, _, exited, _ = self.exec(sandbox_id=s.id, argv=["sh", "-c", "echo $WHO; cat"],
                                      env={"WHO": "me"}, stdin=b"from stdin")
        self.assertEqual(out, b"me\nfrom stdin")
        self.assertEqual(exited.exit_code, 0)
        out, _, _, _ = self.exec(sandbox_id=s.id, argv=["pwd"], cwd="/tmp")
        self.assertEqual(out, b"/tmp\n")
        _, _, exited, _ = self.exec(sandbox_id=s.id, argv=["sleep", "10"],
                                    timeout=duration_pb2.Duration(nanos=200_000_000))
        self.assertTrue(exited.timed_out)

    def test_exec_interactive_stdin_to_cat(self):
        s = self.create()
        inputs = queue.Queue()
        done = object()

        def requests():
            while True:
                item = inputs.get()
                if item is done:
                    return  # half-close: the server expects it after `exited`
                yield item

        inputs.put(pb.ExecInput(start=pb.ExecRequest(sandbox_id=s.id, argv=["cat"])))
        stream = self.sandboxes.ExecInteractive(requests(), timeout=RPC_TIMEOUT)
        out, exited, started = b"", None, False
        try:
            for e in stream:
                kind = e.WhichOneof("event")
                if kind == "started":
                    started = True
                    inputs.put(pb.ExecInput(stdin=b"line one\n"))
                elif kind == "stdout":
                    out += e.stdout
                    if out == b"line one\n":
                        # cat echoed the first line while running: a real
                        # round trip. Then more, and end its stdin.
                        inputs.put(pb.ExecInput(stdin=b"line two\n"))
                        inputs.put(pb.ExecInput(close_stdin=True))
                elif kind == "exited":
                    exited = e.exited
                    inputs.put(done)
        finally:
            inputs.put(done)
        self.assertTrue(started)
        self.assertEqual(out, b"line one\nline two\n")
        self.assertIsNotNone(exited)
        self.assertEqual(exited.exit_code, 0)
        self.assertEqual(stream.code(), grpc.StatusCode.OK)

    def test_files_write_read_stat_listdir_remove(self):
        s = self.create()
        base = self.scratch_dir()
        path = os.path.join(base, "sub", "data.bin")
        data = os.urandom((3 << 20) // 2 + 12345)  # 1.5 MiB and change

        def upload():
            yield pb.WriteFileRequest(header=pb.WriteFileRequest.Header(
                sandbox_id=s.id, path=path, mode=0o600, make_parents=True))
            for i in range(0, len(data), 256 << 10):
                yield pb.WriteFileRequest(data=data[i:i + (256 << 10)])

        r = self.sandboxes.WriteFile(upload(), timeout=RPC_TIMEOUT)
        self.assertEqual(r.bytes_written, len(data))

        chunks = list(self.sandboxes.ReadFile(pb.ReadFileRequest(sandbox_id=s.id, path=path),
                                              timeout=RPC_TIMEOUT))
        self.assertGreater(len(chunks), 1, "a 1.5 MiB file comes in several chunks")
        self.assertTrue(chunks[0].HasField("info"))
        self.assertEqual(chunks[0].info.size, len(data))
        self.assertEqual(b"".join(c.data for c in chunks), data, "byte-exact")

        info = self.sandboxes.Stat(pb.StatRequest(sandbox_id=s.id, path=path),
                                   timeout=RPC_TIMEOUT)
        self.assertEqual(info.name, "data.bin")
        self.assertEqual(info.type, pb.REGULAR)
        self.assertEqual(info.size, len(data))
        self.assertEqual(info.mode & 0o777, 0o600)
        self.assertGreater(info.modified_at.seconds, 0)

        # The exec sees what WriteFile wrote.
        out, _, _, _ = self.exec(sandbox_id=s.id, argv=["wc", "-c", path])
        self.assertEqual(out.split()[0], str(len(data)).encode())

        def small(name, content):
            return iter([pb.WriteFileRequest(header=pb.WriteFileRequest.Header(
                sandbox_id=s.id, path=os.path.join(base, "sub", name))),
                pb.WriteFileRequest(data=content)])
        self.sandboxes.WriteFile(small("a.txt", b"a"), timeout=RPC_TIMEOUT)
        self.sandboxes.WriteFile(small("z.txt", b"zz"), timeout=RPC_TIMEOUT)
        listing = self.sandboxes.ListDir(pb.ListDirRequest(
            sandbox_id=s.id, path=os.path.join(base, "sub")), timeout=RPC_TIMEOUT)
        self.assertEqual([(e.name, e.type, e.size) for e in listing.entries],
                         [("a.txt", pb.REGULAR, 1), ("data.bin", pb.REGULAR, len(data)),
                          ("z.txt", pb.REGULAR, 2)])
        top = self.sandboxes.ListDir(pb.ListDirRequest(sandbox_id=s.id, path=base),
                                     timeout=RPC_TIMEOUT)
        self.assertEqual([(e.name, e.type) for e in top.entries], [("sub", pb.DIRECTORY)])

        self.sandboxes.Remove(pb.RemoveRequest(sandbox_id=s.id, path=path),
                              timeout=RPC_TIMEOUT)
        self.assertCode(grpc.StatusCode.NOT_FOUND, self.sandboxes.Stat,
                        pb.StatRequest(sandbox_id=s.id, path=path))
        self.assertCode(grpc.StatusCode.NOT_FOUND, self.sandboxes.ReadFile,
                        pb.ReadFileRequest(sandbox_id=s.id, path=path))
        self.sandboxes.Remove(pb.RemoveRequest(sandbox_id=s.id, path=os.path.join(base, "sub"),
                                               recursive=True), timeout=RPC_TIMEOUT)
        self.assertFalse(os.path.exists(os.path.join(base, "sub")))
        self.assertCode(grpc.StatusCode.INVALID_ARGUMENT, self.sandboxes.Stat,
                        pb.StatRequest(sandbox_id=s.id, path="relative/path"))

    def test_sleep_wake_and_timeouts(self):
        s = self.create(idle_timeout=dur(0))
        slept = self.sandboxes.Sleep(pb.SleepRequest(id=s.id), timeout=RPC_TIMEOUT)
        self.assertEqual(slept.state, pb.SLEEPING)
        self.assertEqual(self.sandboxes.Get(pb.GetSandboxRequest(id=s.id),
                                            timeout=RPC_TIMEOUT).state, pb.SLEEPING)
        listed = self.sandboxes.List(pb.ListSandboxesRequest(states=[pb.SLEEPING]),
                                     timeout=RPC_TIMEOUT)
        self.assertIn(s.id, [x.id for x in listed.sandboxes])
        woke = self.sandboxes.Wake(pb.WakeRequest(id=s.id), timeout=RPC_TIMEOUT)
        self.assertEqual(woke.state, pb.RUNNING)
        self.assertEqual(woke.wakes, 1)
        out, _, exited, _ = self.exec(sandbox_id=s.id, argv=["echo", "awake"])
        self.assertEqual((out, exited.exit_code), (b"awake\n", 0))

        t = self.sandboxes.SetTimeouts(pb.SetTimeoutsRequest(
            id=s.id, idle_timeout=dur(90), ttl=dur(3600)), timeout=RPC_TIMEOUT)
        self.assertEqual(t.idle_timeout.seconds, 90)
        got = self.sandboxes.Get(pb.GetSandboxRequest(id=s.id), timeout=RPC_TIMEOUT)
        self.assertEqual(got.idle_timeout.seconds, 90)
        self.assertEqual(got.ttl.seconds, 3600)
        self.assertTrue(got.HasField("expires_at"))
        self.assertAlmostEqual(got.expires_at.seconds, time.time() + 3600, delta=120)
        # Unset fields stay as they were.
        t = self.sandboxes.SetTimeouts(pb.SetTimeoutsRequest(id=s.id, idle_timeout=dur(120)),
                                       timeout=RPC_TIMEOUT)
        self.assertEqual((t.idle_timeout.seconds, t.ttl.seconds), (120, 3600))

    def test_error_codes(self):
        unknown = "sb-0123456789abcdef"
        self.assertCode(grpc.StatusCode.NOT_FOUND, self.sandboxes.Get,
                        pb.GetSandboxRequest(id=unknown))
        self.assertCode(grpc.StatusCode.NOT_FOUND, self.sandboxes.Exec,
                        pb.ExecRequest(sandbox_id=unknown, argv=["true"]))
        self.assertCode(grpc.StatusCode.NOT_FOUND, self.sandboxes.Delete,
                        pb.DeleteSandboxRequest(id=unknown))
        for bad in ("../etc", "sb-XYZ", ""):
            self.assertCode(grpc.StatusCode.INVALID_ARGUMENT, self.sandboxes.Get,
                            pb.GetSandboxRequest(id=bad))
        e = self.assertCode(grpc.StatusCode.RESOURCE_EXHAUSTED, self.sandboxes.Create,
                            pb.CreateSandboxRequest(vcpus=1000))
        self.assertIn("vcpu", e.details().lower())
        self.assertCode(grpc.StatusCode.NOT_FOUND, self.sandboxes.Create,
                        pb.CreateSandboxRequest(template="no-such-template"))
        self.assertCode(grpc.StatusCode.NOT_FOUND, self.templates.Get,
                        pb.GetTemplateRequest(name="no-such-template"))


class TokenTest(unittest.TestCase):
    """A daemon with --token wants `authorization: Bearer T`."""

    def test_bearer_token(self):
        daemon = Daemon(DAEMON_BINARY, token="s3cret")
        try:
            daemon.wait_serving()  # health needs no token: probes work
            channel = grpc.intercept_channel(daemon.channel, RECORDER)
            sandboxes = pb_grpc.SandboxesStub(channel)
            templates = pb_grpc.TemplatesStub(channel)
            for call in (lambda md: sandboxes.List(pb.ListSandboxesRequest(), metadata=md,
                                                   timeout=RPC_TIMEOUT),
                         lambda md: templates.List(pb.ListTemplatesRequest(), metadata=md,
                                                   timeout=RPC_TIMEOUT)):
                for md in (None, [("authorization", "Bearer wrong")],
                           [("authorization", "s3cret")]):
                    with self.assertRaises(grpc.RpcError) as cm:
                        call(md)
                    self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
                call([("authorization", "Bearer s3cret")])
            s = sandboxes.Create(pb.CreateSandboxRequest(), timeout=RPC_TIMEOUT,
                                 metadata=[("authorization", "Bearer s3cret")])
            self.assertEqual(s.state, pb.RUNNING)
            self.assertTrue(daemon.agent_pids(), "its fake VM runs")
        finally:
            status = daemon.stop()
            left = daemon.agent_pids()
            daemon.cleanup()
        self.assertEqual(status, 0, "stops cleanly on SIGTERM")
        self.assertEqual(left, [], "and ends its fake VMs")


def main():
    global DAEMON_BINARY, RECORDER
    args = sys.argv[1:]
    if args and not args[0].startswith("-"):
        DAEMON_BINARY = args.pop(0)
    else:
        DAEMON_BINARY = os.environ.get("SBX_TEST_SANDBOXD")
    if not DAEMON_BINARY or not os.access(DAEMON_BINARY, os.X_OK):
        print("usage: client_test.py PATH/test_sandboxd [unittest args] "
              "(or env SBX_TEST_SANDBOXD); got %r" % DAEMON_BINARY)
        return 2
    check_facilities()
    gen_dir = tempfile.mkdtemp(prefix="sbxpy-stubs")
    try:
        generate_stubs(gen_dir)
        import_stubs()
        RECORDER = make_recorder_class()()
        program = unittest.main(argv=[sys.argv[0]] + args, exit=False, verbosity=2)
    finally:
        shutil.rmtree(gen_dir, ignore_errors=True)
    result = program.result
    if not result.wasSuccessful():
        return 1
    if not args:  # the whole suite ran: it must have driven every RPC
        want = {"/%s/%s" % (service.full_name, method.name)
                for service in pb.DESCRIPTOR.services_by_name.values()
                for method in service.methods}
        missed = sorted(want - RECORDER.methods)
        if missed:
            print("FAILED: these RPCs were never called: " + ", ".join(missed))
            return 1
        print("called all %d RPCs of %s" % (
            len(want), ", ".join(sorted(s.full_name
                                        for s in pb.DESCRIPTOR.services_by_name.values()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
