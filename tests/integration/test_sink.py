#!/usr/bin/python3
"""Integration test of bench/carteiro-sink: one sink process, one listener per
behaviour on its own 127.20.1.x address, driven over real sockets.

usage: test_sink.py PATH/carteiro-sink PATH/gen-certs
Readiness is polled (the sink writes --ready-file); every wait is bounded.
"""
import json
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time

SINK, GEN_CERTS = sys.argv[1], sys.argv[2]
PORT = 2525
L = {  # name -> (address, options)
    "plain": ("127.20.1.1", ""),
    "defer": ("127.20.1.2", "defer=100"),
    "bounce": ("127.20.1.3", "bounce=100"),
    "greet": ("127.20.1.4", "greet=421"),
    "failrcpt": ("127.20.1.5", "fail=rcpt:452"),
    "faildot": ("127.20.1.6", "fail=dot:554"),
    "failehlo": ("127.20.1.7", "fail=ehlo:502"),
    "after": ("127.20.1.8", "after=2"),
    "delay": ("127.20.1.9", "delay=200"),
    "split": ("127.20.1.10", "split"),
    "huge": ("127.20.1.11", "huge=1000000"),
    "silent": ("127.20.1.12", "silent=rcpt"),
    "drop": ("127.20.1.13", "drop=data"),
    "tlsfail": ("127.20.1.14", "tls=fail"),
    "nopipe": ("127.20.1.15", "nopipelining,notls"),
    "maxsize": ("127.20.1.16", "maxsize=1000"),
    "maxconn": ("127.20.1.17", "maxconn=2"),
    "defer50": ("127.20.1.18", "defer=50,bounce=10"),
    "failmail": ("127.20.1.19", "fail=mail:451"),
    "faildata": ("127.20.1.20", "fail=data:554"),
}
FAILS = []


def check(cond, what):
    if not cond:
        FAILS.append(what)
        print("FAIL:", what, flush=True)


def wait_for(pred, what, limit=10.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    raise SystemExit("timed out waiting for " + what)


def conn(name, timeout=5.0):
    s = socket.create_connection((L[name][0], PORT), timeout=timeout)
    return s


def read_replies(s, n):
    """Read until n complete final reply lines (code + space) arrived."""
    data = b""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = data.split(b"\r\n")
        finals = [x for x in lines[:-1] if len(x) >= 4 and x[3:4] == b" "]
        if len(finals) >= n:
            return finals[:n], data
        k = s.recv(1 << 20)
        if not k:
            break
        data += k
    lines = data.split(b"\r\n")
    return [x for x in lines[:-1] if len(x) >= 4 and x[3:4] == b" "], data


def codes(finals):
    return [int(x[:3]) for x in finals]


def session(name, cmds, n):
    s = conn(name)
    read_replies(s, 1)
    s.sendall(cmds)
    f, _ = read_replies(s, n)
    s.close()
    return codes(f)


def test_pipelining(d):
    msg = b"Subject: p\r\n\r\nbody\r\n.\r\n"
    group = (b"EHLO t\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<p1@gmail.test>\r\n"
             b"RCPT TO:<p2@d0001.test>\r\nDATA\r\n" + msg +
             b"MAIL FROM:<a@x.test>\r\nRCPT TO:<p3@gmail.test>\r\nDATA\r\n" + msg +
             b"VRFY x\r\nNOOP\r\nRSET\r\nBOGUS\r\nQUIT\r\n")
    c = session("plain", group, 15)
    check(c == [250, 250, 250, 250, 354, 250, 250, 250, 354, 250, 252, 250, 250, 500, 221],
          "pipelining codes %r" % c)


def test_bytewise_unstuffing(d):
    s = conn("plain")
    read_replies(s, 1)
    body = (b"Subject: byte\r\nX-Id: bytewise\r\n\r\n..leading dot\r\n.\r\n"[:0] +
            b"Subject: byte\r\nX-Id: bytewise\r\n\r\n..leading dot\r\nmiddle.\r\n...\r\n")
    data = (b"EHLO t\r\nMAIL FROM:<b@x.test>\r\nRCPT TO:<byte@gmail.test>\r\nDATA\r\n" +
            body + b".\r\nQUIT\r\n")
    for ch in data:
        s.send(bytes([ch]))
    f, _ = read_replies(s, 6)
    s.close()
    check(codes(f) == [250, 250, 250, 354, 250, 221], "bytewise codes %r" % codes(f))
    files = [x for x in os.listdir(d["save"]) if x.startswith("plain-")]
    found = None
    for x in files:
        raw = open(os.path.join(d["save"], x), "rb").read()
        if b"X-Id: bytewise" in raw:
            found = raw
    check(found is not None, "bytewise message saved")
    if found:
        hdr, _, content = found.partition(b"Subject: byte")
        check(b"X-Sink-Envelope: RCPT TO:<byte@gmail.test>" in hdr, "envelope rcpt")
        check(b"X-Sink-Envelope: MAIL FROM:<b@x.test>" in hdr, "envelope from")
        check(b"tls=no" in hdr, "envelope tls=no")
        check(content == b"\r\nX-Id: bytewise\r\n\r\n.leading dot\r\nmiddle.\r\n..\r\n",
              "unstuffed content %r" % content)


def test_defer(d):
    cmd = b"EHLO t\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<later@gmail.test>\r\nQUIT\r\n"
    check(session("defer", cmd, 4) == [250, 250, 451, 221], "first attempt deferred")
    check(session("defer", cmd, 4) == [250, 250, 250, 221], "second attempt accepted")
    # defer=50,bounce=10: deterministic per address, all deferred ones pass later.
    rc = b"".join(b"RCPT TO:<u%d@d0002.test>\r\n" % i for i in range(200))
    cmd = b"EHLO t\r\nMAIL FROM:<a@x.test>\r\n" + rc + b"QUIT\r\n"
    first = session("defer50", cmd, 203)[2:-1]
    second = session("defer50", cmd, 203)[2:-1]
    n451, n550 = first.count(451), first.count(550)
    check(40 <= n451 <= 160 and 5 <= n550 <= 40, "defer/bounce shares %d %d" % (n451, n550))
    check(451 not in second, "no deferral on second attempt")
    check(all(a == b for a, b in zip(first, second) if a == 550), "bounces stable")


def test_faults(d):
    e = b"EHLO t\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<f@gmail.test>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n"
    check(session("bounce", e, 4)[:3] == [250, 250, 550], "bounce 550")
    check(session("failrcpt", e, 4)[:3] == [250, 250, 452], "fail=rcpt:452")
    check(session("faildot", e, 6) == [250, 250, 250, 354, 554, 221], "fail=dot:554")
    check(session("failmail", e, 2) == [250, 451], "fail=mail:451")
    check(session("faildata", e, 4) == [250, 250, 250, 554], "fail=data:554")
    c = session("failehlo", b"EHLO t\r\nHELO t\r\nQUIT\r\n", 3)
    check(c == [502, 250, 221], "fail=ehlo:502 then HELO %r" % c)
    s = conn("greet")
    f, _ = read_replies(s, 1)
    check(codes(f) == [421] and s.recv(100) == b"", "greet=421 then close")
    s.close()
    # after=2: the third MAIL gets 421 and the connection closes.
    one = b"MAIL FROM:<a@x.test>\r\nRCPT TO:<f@gmail.test>\r\nDATA\r\nx\r\n.\r\n"
    s = conn("after")
    read_replies(s, 1)
    s.sendall(b"EHLO t\r\n" + one * 3)
    f, _ = read_replies(s, 10)
    check(codes(f) == [250] + [250, 250, 354, 250] * 2 + [421], "after=2 %r" % codes(f))
    check(s.recv(100) == b"", "after=2 closes")
    s.close()
    # delay: replies are not earlier than the delay.
    t0 = time.monotonic()
    s = conn("delay")
    read_replies(s, 1)
    check(time.monotonic() - t0 >= 0.19, "delay=200 banner")
    s.close()
    # split: replies arrive byte by byte but intact.
    s = conn("split")
    read_replies(s, 1)
    s.sendall(b"EHLO t\r\n")
    f, raw = read_replies(s, 1)
    check(b"250-PIPELINING\r\n" in raw and codes(f) == [250], "split EHLO intact")
    s.close()
    s = conn("huge")
    read_replies(s, 1)
    s.sendall(b"EHLO t\r\n")
    f, raw = read_replies(s, 1)
    check(len(raw) >= 1000000 and f[-1].startswith(b"250 "), "huge EHLO %d" % len(raw))
    s.close()
    s = conn("silent", timeout=0.5)
    read_replies(s, 1)
    s.sendall(b"EHLO t\r\nMAIL FROM:<a@x.test>\r\n")
    read_replies(s, 2)
    s.sendall(b"RCPT TO:<s@gmail.test>\r\n")
    try:
        k = s.recv(100)
        check(False, "silent=rcpt answered %r" % k)
    except socket.timeout:
        pass
    s.close()
    s = conn("drop")
    read_replies(s, 1)
    s.sendall(b"EHLO t\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<d@gmail.test>\r\nDATA\r\n")
    read_replies(s, 4)
    s.sendall(b"Subject: part\r\n")
    data = b""
    try:
        while True:
            k = s.recv(100)
            if not k:
                break
            data += k
    except (ConnectionResetError, socket.timeout):
        pass
    check(data == b"", "drop=data closes without reply")
    s.close()
    raw = session("nopipe", b"EHLO t\r\nQUIT\r\n", 2)
    s = conn("nopipe")
    read_replies(s, 1)
    s.sendall(b"EHLO t\r\n")
    _, r = read_replies(s, 1)
    check(b"PIPELINING" not in r and b"STARTTLS" not in r, "nopipelining,notls")
    s.close()
    c = session("maxsize", b"EHLO t\r\nMAIL FROM:<a@x.test> SIZE=2000\r\nMAIL FROM:<a@x.test> SIZE=10\r\n"
                b"RCPT TO:<m@gmail.test>\r\nDATA\r\n" + b"y" * 2000 + b"\r\n.\r\nQUIT\r\n", 7)
    check(c == [250, 552, 250, 250, 354, 552, 221], "maxsize %r" % c)
    c = session("plain", b"NOOP " + b"z" * 5000 + b"\r\nNOOP\r\n", 2)
    check(c == [500, 250], "long line %r" % c)


def test_tls(d):
    ctx = ssl.create_default_context(cafile=os.path.join(d["certs"], "ca.crt"))
    for _ in range(2):
        s = smtplib.SMTP(L["plain"][0], PORT, local_hostname="t", timeout=10)
        s.ehlo()
        check(s.has_extn("starttls"), "STARTTLS advertised")
        s.starttls(context=ctx)
        s.ehlo()
        check(not s.has_extn("starttls"), "no STARTTLS after TLS")
        s.sendmail("t@x.test", ["tls@gmail.test"], "Subject: tls\r\nX-Id: tls\r\n\r\nsecret\r\n")
        s.quit()
    # Session resumption: a second connection offers the first one's session.
    sess = None
    for i in range(2):
        raw = conn("plain")
        read_replies(raw, 1)
        raw.sendall(b"EHLO t\r\nSTARTTLS\r\n")
        read_replies(raw, 2)
        t = ctx.wrap_socket(raw, server_hostname=L["plain"][0], session=sess)
        t.sendall(b"EHLO t\r\nQUIT\r\n")
        read_replies(t, 2)
        if i == 1:
            check(t.session_reused, "TLS session resumed")
        sess = t.session
        t.close()
    s = smtplib.SMTP(L["tlsfail"][0], PORT, local_hostname="t", timeout=10)
    s.ehlo()
    try:
        s.starttls(context=ctx)
        check(False, "tls=fail handshake succeeded")
    except (ssl.SSLError, OSError, smtplib.SMTPException):
        pass
    saved = [open(os.path.join(d["save"], x), "rb").read() for x in os.listdir(d["save"])]
    check(sum(1 for r in saved if b"X-Id: tls" in r and b"tls=yes" in r) == 2, "tls saved")


def test_maxconn(d):
    a, b = conn("maxconn"), conn("maxconn")
    read_replies(a, 1)
    read_replies(b, 1)
    c = conn("maxconn")
    f, _ = read_replies(c, 1)
    check(codes(f) == [421], "maxconn third refused %r" % codes(f))
    for x in (a, b, c):
        x.close()


def stats(d, proc):
    before = os.stat(d["stats"]).st_mtime_ns if os.path.exists(d["stats"]) else 0
    os.remove(d["stats"]) if before else None
    proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: os.path.exists(d["stats"]), "stats file")
    return json.load(open(d["stats"]))


def main():
    with tempfile.TemporaryDirectory(prefix="sinktest.") as tmp:
        d = {"save": os.path.join(tmp, "save"), "stats": os.path.join(tmp, "stats.json"),
             "certs": os.path.join(tmp, "certs"), "ready": os.path.join(tmp, "ready")}
        subprocess.run([GEN_CERTS, d["certs"], "mx1.test"] +
                       ["IP:" + a for a, _ in L.values()], check=True, stdout=subprocess.DEVNULL)
        args = [SINK, "--ready-file", d["ready"], "--save", d["save"], "--stats", d["stats"],
                "--cert", os.path.join(d["certs"], "server.crt"),
                "--key", os.path.join(d["certs"], "server.key")]
        for name, (addr, opts) in L.items():
            args += ["-l", "%s:%d,name=%s%s" % (addr, PORT, name, "," + opts if opts else "")]
        proc = subprocess.Popen(args)
        try:
            wait_for(lambda: os.path.exists(d["ready"]) or proc.poll() is not None, "ready")
            if proc.poll() is not None:
                raise SystemExit("sink exited with %d" % proc.returncode)
            for t in (test_pipelining, test_bytewise_unstuffing, test_defer, test_faults,
                      test_tls, test_maxconn):
                print("--", t.__name__, flush=True)
                t(d)
            st = stats(d, proc)
            ls = {x["name"]: x for x in st["listeners"]}
            p = ls["plain"]
            check(st["seq"] >= 1, "stats seq")
            check(p["messages"] == 5, "plain messages %d" % p["messages"])
            check(p["domains"] == {"gmail.test": 5, "d0001.test": 1}, "domains %r" % p["domains"])
            check(p["tls"]["handshakes"] == 4 and p["tls"]["resumed"] == 1,
                  "tls handshakes %r" % p["tls"])
            check(ls["tlsfail"]["tls"]["failed"] >= 1, "tls failed counted")
            check(ls["maxconn"]["connections"]["refused_maxconn"] == 1 and
                  ls["maxconn"]["connections"]["peak"] == 2, "maxconn counters")
            check(ls["after"]["messages"] == 2, "after messages")
            check(sum(c for _, c in p["per_second"]) == 5, "per_second histogram")
            os.remove(d["stats"])
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=10)
            check(rc == 0, "exit 0 on SIGTERM, got %d" % rc)
            check(os.path.exists(d["stats"]), "stats written on SIGTERM")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if FAILS:
        print("%d failure(s)" % len(FAILS))
        sys.exit(1)
    print("all sink checks passed")


if __name__ == "__main__":
    main()
