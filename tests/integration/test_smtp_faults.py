#!/usr/bin/python3
"""The SMTP client against servers that misbehave, and TLS policies.

One bench sink process presents a different behaviour on each loopback
address (127.10.5.x:25): 421 greetings, 4xx/5xx at MAIL/RCPT/DATA/dot,
dropped connections, silence, replies split into single bytes, a 1 MB EHLO
reply, EHLO refused (HELO fallback), no PIPELINING, a SIZE limit, a failing
TLS handshake, 421 after N messages. Each behaviour is one recipient
domain. dnsmasq gives MX host names for the TLS `verify` cases (a host name
in the test certificate, and one that is not). For every recipient the
first attempt's outcome must be the right one (delivered / deferred /
bounced, code, category), and nothing is ever delivered twice or reported
delivered by mistake.

usage: test_smtp_faults.py CARTEIRO SINK GEN_CERTS
"""
import csv
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from carteiro_test import check, finish, Engine, World, start_dnsmasq, wait_until  # noqa

CARTEIRO, SINK, GEN_CERTS = map(os.path.abspath, sys.argv[1:4])
DNS, DNS_PORT = "127.10.5.53", 5354

# domain: (address suffix, sink options)
CASES = {
    "ok": (1, ""),
    "greet": (2, "greet=421"),
    "rcpt452": (3, "fail=rcpt:452"),
    "rcpt550": (4, "bounce=100"),
    "dot554": (5, "fail=dot:554"),
    "mail451": (6, "fail=mail:451"),
    "drop": (7, "drop=data"),
    "silent": (8, "silent=rcpt"),
    "split": (9, "split"),
    "huge": (10, "huge=1000000"),
    "helo": (11, "fail=ehlo:502"),
    "after": (12, "after=2"),
    "tlsfail": (13, "tls=fail"),
    "nopipe": (14, "nopipelining"),
    "small": (15, "maxsize=1000"),
    "required": (16, "notls"),
    "verify": (17, ""),
    "verifybad": (18, ""),
    "resume": (19, ""),
}
PER = 4    # contacts per case


def main():
    w = World("smtpfaults")
    try:
        certs = w.path("certs")
        subprocess.run(["sh", GEN_CERTS, certs, "mx1.test", "localhost"],
                       check=True, capture_output=True)
        argv = [SINK, "--cert", os.path.join(certs, "server.crt"), "--key",
                os.path.join(certs, "server.key"), "--ready-file",
                w.path("sink.ready")]
        for name, (n, opts) in CASES.items():
            argv += ["-l", f"127.10.5.{n}:25" + (f",{opts}" if opts else "")]
        sink = w.start(argv, "sink")
        w.wait_file(sink, "sink", w.path("sink.ready"))

        lines = ["local=/faults.test/", "local=/test/",
                 "host-record=mx1.test,127.10.5.17",
                 "host-record=mxbad.test,127.10.5.18",
                 "mx-host=verify.faults.test,mx1.test,10",
                 "mx-host=verifybad.faults.test,mxbad.test,10"]
        start_dnsmasq(w, DNS, DNS_PORT, lines, "verify.faults.test")

        routes = "\n".join(f"{name}.faults.test = 127.10.5.{n}:25"
                           for name, (n, _) in CASES.items()
                           if not name.startswith("verify"))
        conf = f"""[dns]
servers = {DNS}:{DNS_PORT}
[smtp]
tls = opportunistic
ca_file = {os.path.join(certs, 'ca.crt')}
command_timeout = 2s
data_block_timeout = 2s
data_term_timeout = 2s
max_messages_per_connection = 2
[retry]
schedule = 1h
[route]
{routes}
[domain required.faults.test]
tls = required
[domain verify.faults.test]
tls = verify
[domain verifybad.faults.test]
tls = verify
[domain resume.faults.test]
max_connections = 1
"""
        e = Engine(w, CARTEIRO, conf).start()
        with open(w.path("c.csv"), "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["email", "first_name"])
            for name in CASES:
                for i in range(PER):
                    wr.writerow([f"u{i}@{name}.faults.test", "Tânia"])
        body = "Olá {{first_name}}!\n" + "linha de texto\n" * 100
        with open(w.path("c.json"), "w") as f:
            json.dump({"name": "faults", "from": "L <l@loja.test>",
                       "subject": "faults", "text": body,
                       "contacts": "c.csv"}, f)
        cid = int(e.cli("submit", w.path("c.json")).stdout.split()[0])

        total = len(CASES) * PER

        def all_first_attempts():
            ev = e.events_list()
            seen = {x["rcpt"] for x in ev
                    if x.get("event") in ("delivered", "deferred",
                                          "bounced")}
            return len(seen) >= total
        wait_until("first attempts", all_first_attempts, 120, 0.1)
        ev = e.events_list()
        first = {}
        for x in ev:
            if x.get("event") in ("delivered", "deferred", "bounced"):
                first.setdefault(x["rcpt"], x)
        delivered = [x["rcpt"] for x in ev if x.get("event") == "delivered"]
        check("nothing delivered twice",
              len(delivered) == len(set(delivered)))

        def outcome(name):
            return [first.get(f"u{i}@{name}.faults.test", {})
                    for i in range(PER)]

        def expect(name, event, cond=lambda x: True, what=""):
            xs = outcome(name)
            check(f"{name}: {event} {what}",
                  all(x.get("event") == event and cond(x) for x in xs),
                  json.dumps(xs, ensure_ascii=False))

        expect("ok", "delivered", lambda x: x.get("tls", "").startswith(
            "TLS"), "over STARTTLS (opportunistic)")
        expect("greet", "deferred", what="(421 greeting)")
        expect("rcpt452", "deferred", lambda x: x.get("code") == 452)
        expect("rcpt550", "bounced", lambda x: x.get("code") == 550 and
               x.get("category") == "bad_mailbox")
        expect("dot554", "bounced", lambda x: x.get("code") == 554)
        expect("mail451", "deferred", lambda x: x.get("code") == 451)
        expect("drop", "deferred", lambda x: "closed" in x.get("reply", ""),
               "(connection dropped in DATA)")
        expect("silent", "deferred", lambda x: "timeout" in
               x.get("reply", ""), "(server silent: timeout)")
        expect("split", "delivered", what="(replies split byte by byte)")
        expect("huge", "delivered", what="(1 MB EHLO reply)")
        expect("helo", "delivered", what="(EHLO refused: HELO)")
        expect("nopipe", "delivered", what="(no PIPELINING)")
        expect("small", "bounced", lambda x: x.get("category") ==
               "too_large" and "mx" in x, "(over SIZE: not sent)")
        expect("tlsfail", "deferred", lambda x: "TLS" in x.get("reply", ""),
               "(TLS handshake fails)")
        expect("required", "deferred", lambda x: "STARTTLS not offered" in
               x.get("reply", ""), "(tls=required, no STARTTLS)")
        expect("resume", "delivered", lambda x: x.get("tls", "").startswith(
            "TLS"), "(one connection at a time, 2 messages each)")
        expect("verify", "delivered", lambda x: x.get("tls", "").startswith(
            "TLS"), "(tls=verify, good certificate)")
        expect("verifybad", "deferred", lambda x: "certificate" in
               x.get("reply", ""), "(tls=verify, wrong host name)")
        xs = outcome("after")
        check("after: 421 after 2 messages defers the rest, delivers 2",
              sum(x.get("event") == "delivered" for x in xs) >= 2 and
              all(x.get("event") == "delivered" or x.get("code") == 421
                  for x in xs), json.dumps(xs))
        st = e.req({"op": "status", "id": cid})
        tls = st["engine"]["tls"]
        check("TLS sessions are resumed per site", tls["resumed"] >= 1,
              json.dumps(tls))
        c = st["campaigns"][0]
        check("status counts match the event log",
              c["delivered"] == len(delivered), json.dumps(c))
        e.stop()
    finally:
        w.close()
    sys.exit(finish())


main()
