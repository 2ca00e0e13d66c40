"""Shared pieces of carteiro's integration tests (stdlib only).

Every helper that starts a process records it, and `World.close()` ends
exactly those processes, by PID. Waiting is always polling a condition with
an upper bound, never sleeping and hoping.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time


_failed = [0]


def check(name, cond, detail=""):
    """One TAP-like line: "ok - NAME" or "not ok - NAME DETAIL"."""
    if cond:
        print(f"ok - {name}")
    else:
        _failed[0] += 1
        print(f"not ok - {name} {detail}"[:3000])


def finish():
    """Print how many checks failed; the exit status for sys.exit()."""
    print(f"{_failed[0]} failed")
    return 1 if _failed[0] else 0


def wait_until(what, cond, limit=30.0, step=0.02):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(step)
    raise TimeoutError(f"{what} not ready within {limit}s")


class World:
    """A temporary directory and the processes started in it."""

    def __init__(self, name, keep=False):
        self.dir = tempfile.mkdtemp(prefix=f"carteiro-{name}-")
        self.procs = []
        self.keep = keep or os.environ.get("CARTEIRO_KEEP")

    def path(self, *p):
        return os.path.join(self.dir, *p)

    def start(self, argv, name, **kw):
        log = open(self.path(f"{name}.log"), "wb")
        p = subprocess.Popen(argv, stdout=kw.pop("stdout", log), stderr=log,
                             cwd=kw.pop("cwd", self.dir), **kw)
        self.procs.append((name, p))
        return p

    def stop(self, p, sig=signal.SIGTERM, limit=30):
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(limit)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = [(n, q) for n, q in self.procs if q is not p]

    def close(self):
        for name, p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs = []
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def wait_file(self, proc, name, path, limit=60):
        """Wait until `proc` (started as `name`) creates `path`; fail with
        its log if it exits first or takes longer than `limit`."""
        try:
            wait_until(name, lambda: os.path.exists(path) or
                       proc.poll() is not None, limit)
        except TimeoutError:
            raise TimeoutError(f"{name} not ready in {limit}s:\n"
                               f"{self.log(name)}")
        if not os.path.exists(path):
            raise RuntimeError(f"{name} exited ({proc.returncode}):\n"
                               f"{self.log(name)}")

    def log(self, name):
        try:
            with open(self.path(f"{name}.log"), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


def port_open(addr, port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((addr, port)) == 0


def request(sock_path, req, limit=60):
    """One request on the control socket; returns the reply object."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(limit)
        s.connect(sock_path)
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


class Engine:
    """`carteiro serve` with a generated config in a World."""

    def __init__(self, world, binary, extra_conf="", name="engine"):
        self.w = world
        self.bin = binary
        self.name = name
        self.socket = world.path(f"{name}.sock")
        self.events = world.path(f"{name}-events.log")
        self.conf = world.path(f"{name}.conf")
        with open(self.conf, "w") as f:
            f.write(f"""[engine]
hostname = carteiro.test
spool = {world.path(name + '-spool')}
socket = {self.socket}
event_log = {self.events}
log_level = {os.environ.get("CARTEIRO_LOG", "info")}
render_threads = 2

[smtp]
connect_timeout = 5s
greeting_timeout = 10s
command_timeout = 10s
data_init_timeout = 10s
data_block_timeout = 10s
data_term_timeout = 10s
idle_timeout = 1s
{extra_conf}
""")
        self.proc = None

    def start(self):
        self.proc = self.w.start([self.bin, "serve", "-c", self.conf],
                                 self.name)
        try:
            wait_until("engine", lambda: self.proc.poll() is None and
                       os.path.exists(self.socket) and
                       self.req({"op": "ping"}).get("ok"), 60)
        except TimeoutError:
            raise TimeoutError("engine not ready:\n" + self.w.log(self.name))
        return self

    def req(self, r, limit=120):
        return request(self.socket, r, limit)

    def cli(self, *args, check=True, timeout=300):
        argv = [self.bin, args[0], "-s", self.socket, *args[1:]]
        r = subprocess.run(argv, capture_output=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"carteiro {' '.join(args)} failed "
                                 f"({r.returncode}): {r.stderr.decode()}")
        return r

    def stop(self):
        if self.proc:
            self.w.stop(self.proc)
            self.proc = None

    def kill(self):
        if self.proc:
            self.w.stop(self.proc, signal.SIGKILL)
            self.proc = None

    def events_list(self):
        out = []
        try:
            with open(self.events, encoding="utf-8") as f:
                for line in f:
                    out.append(json.loads(line))
        except FileNotFoundError:
            pass
        return out

    def wait_done(self, cid, limit=300):
        def done():
            r = self.req({"op": "status", "id": cid})
            c = r["campaigns"][0]
            return c["state"] in ("done", "cancelled")
        wait_until(f"campaign {cid}", done, limit, 0.1)
        return self.req({"op": "status", "id": cid})["campaigns"][0]


def dns_answers(server, port, name, qtype=15):
    """Number of answers to one UDP query, or None without a reply."""
    import struct
    q = struct.pack(">HHHHHH", 7, 0x100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        s.sendto(q, (server, port))
        try:
            d = s.recv(4096)
        except socket.timeout:
            return None
    return struct.unpack(">HHHHHH", d[:12])[3]


def start_dnsmasq(w, addr, port, lines, probe):
    """dnsmasq on addr:port serving `lines` (dnsmasq.conf syntax); waits
    until `probe` (a name with an MX record) answers."""
    conf = w.path("dnsmasq.conf")
    with open(conf, "w") as f:
        f.write("\n".join(lines) + "\n")
    p = w.start(["dnsmasq", "--keep-in-foreground", "--no-resolv",
                 "--no-hosts", "--bind-interfaces",
                 f"--listen-address={addr}", f"--port={port}",
                 f"--conf-file={conf}", "--user=root",
                 f"--pid-file={w.path('dnsmasq.pid')}"], "dnsmasq")
    wait_until("dnsmasq", lambda: p.poll() is None and
               (dns_answers(addr, port, probe) or 0) > 0, 20)
    return p
